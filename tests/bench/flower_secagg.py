"""One SecAgg+ round run by Flower 1.42's own code in one process, timed in the units of
`webfl bench secagg`: the server's unmasking alone, each client stage (mean seconds per client)
and the bytes a surviving client sends and receives.

What is Flower's and what is glue:
- Server: flwr.server.workflow.SecAggPlusWorkflow's four stage methods (setup_stage,
  share_keys_stage, collect_masked_vectors_stage, unmask_stage), called in the order its
  __call__ calls them, on a LegacyContext holding Flower's FedAvg and SimpleClientManager.
  `num_shares` and `reconstruction_threshold` have no defaults in SecAggPlusWorkflow; they are
  set to webfl's graph (k + 1 share holders, k = 2⌈log2 n⌉, threshold ⌈k/2⌉ + 1) unless given.
  Everything else is the workflow's default (max_weight 1000, clipping_range 8.0,
  quantization_range 2^22, modulus_range 2^32).
- Clients: flwr.client.mod.secaggplus_mod, whole, each node with its own Context; its `call_next`
  (the glue's "training") returns a FitRes holding the node's fixed update with
  num_examples = max_weight, so each update's weight ratio is 1.
- Glue: `Loopback`, a Grid with only send_and_receive: each message crosses as Flower 1.42's
  wire objects (deflated with get_all_nested_objects, inflated with inflate_object_from_contents),
  whose sizes, without gRPC framing, are the byte count; a dropped node gives no reply from the collect-masked-vectors
  stage on. The global model sent with the fit instruction is empty, so the bytes are those of
  SecAgg+ alone, without the model download (as in webfl's count).
- Timing: wrappers around the mod's _setup, _share_keys, _collect_masked_vectors and _unmask time
  the client stages; server_unmask_s is unmask_stage's time less the time inside the grid (the
  clients' replies and their transport) and less FedAvg's aggregate_fit, which follows the
  unmasking. Spies on the mod's factor_combine and the workflow's factor_extract keep references
  to each client's quantized input and to the unmasked sum, for the check.

Check: the unmasked integer sum equals the survivors' quantized inputs summed mod 2^32, the
weight total is theirs, and the aggregate is their mean within one quantization step.

Usage: python tests/bench/flower_secagg.py --clients 100 --dim 199210 --dropout 0.1
       [--num-shares S] [--threshold T] [--seed 1]
"""

import argparse
import importlib
import json
import logging
import math
import random
import time
import uuid

import numpy as np
import flwr
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.server_config import ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.task_identity import TaskIdentity

# The modules themselves (their packages re-export the function and the class under these names).
client_mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
server_workflow = importlib.import_module("flwr.server.workflow.secure_aggregation.secaggplus_workflow")

MAX_WEIGHT = 1000.0  # SecAggPlusWorkflow's default max_weight


class Clock:
    """Seconds spent per (stage, node) in the wrapped functions."""

    def __init__(self):
        self.seconds = {}
        self.node = None  # the node whose stage is running

    def wrap(self, stage, fn):
        def timed(state, *args):
            self.node = state.nid
            started = time.perf_counter()
            out = fn(state, *args)
            self.seconds[(stage, state.nid)] = time.perf_counter() - started
            return out

        return timed

    def mean(self, stage, nids):
        return sum(self.seconds[(stage, nid)] for nid in nids) / max(len(nids), 1)


class Loopback:
    """A Grid reduced to send_and_receive: runs each node's secaggplus_mod in process."""

    def __init__(self, inputs, dropped):
        self.inputs = inputs
        self.dropped = dropped
        self.contexts = {
            nid: Context(run_id=1, node_id=nid, node_config={}, state=RecordDict(), run_config={})
            for nid in inputs
        }
        self.bytes = {nid: 0 for nid in inputs}
        self.seconds = 0.0

    def ship(self, msg, nid):
        """Carry a message as Flower's wire objects; count their bytes against node `nid`."""
        objects = get_all_nested_objects(msg)
        contents = {oid: obj.deflate() for oid, obj in objects.items()}
        self.bytes[nid] += sum(len(c) for c in contents.values())
        out = inflate_object_from_contents(msg.object_id, contents)
        out.metadata.__dict__["_message_id"] = msg.metadata.message_id
        return out

    def train(self, msg, ctxt):
        """The ClientApp's train function behind the mod: a fixed update, weight max_weight."""
        update = [self.inputs[ctxt.node_id]]
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), int(MAX_WEIGHT), {})
        return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)

    def send_and_receive(self, messages, *, timeout=None):
        started = time.perf_counter()
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            nid = msg.metadata.dst_node_id
            stage = msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]
            if nid in self.dropped and stage in (Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK):
                continue
            received = self.ship(msg, nid)
            reply = client_mod.secaggplus_mod(received, self.contexts[nid], self.train)
            replies.append(self.ship(reply, nid))
        self.seconds += time.perf_counter() - started
        return replies


def webfl_graph(clients):
    """webfl's SecAggConfig::recommended: k = 2⌈log2 n⌉ neighbours, threshold ⌈k/2⌉ + 1."""
    k = min(2 * math.ceil(math.log2(clients)), clients - 1)
    return k + 1, (k + 1) // 2 + 1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--dim", type=int, default=199210)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--num-shares", type=int)
    parser.add_argument("--threshold", type=int)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    assert 0.0 <= args.dropout < 1.0, "--dropout must be in [0, 1)"
    num_shares, threshold = webfl_graph(args.clients)
    num_shares = args.num_shares or num_shares
    threshold = args.threshold or threshold
    logging.getLogger("flwr").setLevel(logging.ERROR)

    random.seed(args.seed)  # the workflow shuffles node IDs with `random`
    np.random.seed(args.seed)  # Flower's stochastic rounding draws from np.random
    rng = np.random.default_rng(args.seed)
    nids = random.sample(range(1, 2**63), args.clients)
    inputs = {nid: rng.uniform(-0.1, 0.1, args.dim).astype(np.float32) for nid in nids}
    dropped = set(random.sample(nids, round(args.dropout * args.clients)))
    survivors = [nid for nid in nids if nid not in dropped]

    # Spies: keep references to what Flower computes, changing nothing.
    clock = Clock()
    for stage in ("_setup", "_share_keys", "_collect_masked_vectors", "_unmask"):
        setattr(client_mod, stage, clock.wrap(stage, getattr(client_mod, stage)))
    quantized = {}
    factor_combine = client_mod.factor_combine

    def spy_combine(q_ratio, params):
        quantized[clock.node] = (q_ratio, params)
        return factor_combine(q_ratio, params)

    client_mod.factor_combine = spy_combine
    unmasked = []
    factor_extract = server_workflow.factor_extract

    def spy_extract(params):
        out = factor_extract(params)
        unmasked.append(out)
        return out

    server_workflow.factor_extract = spy_extract

    class TimedFedAvg(FedAvg):
        seconds = 0.0

        def aggregate_fit(self, *a, **kw):
            started = time.perf_counter()
            out = super().aggregate_fit(*a, **kw)
            TimedFedAvg.seconds += time.perf_counter() - started
            return out

    # The server process's identity, as flwr.server.compat.app sets it.
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    grid = Loopback(inputs, dropped)
    strategy = TimedFedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=args.clients,
        min_available_clients=args.clients,
    )
    context = LegacyContext(
        Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        config=ServerConfig(num_rounds=1), strategy=strategy, client_manager=SimpleClientManager(),
    )
    for nid in nids:
        context.client_manager.register(GridClientProxy(nid, grid, run_id=1))
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: 1})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()  # no model download

    workflow = server_workflow.SecAggPlusWorkflow(num_shares=num_shares, reconstruction_threshold=threshold)
    state = server_workflow.WorkflowState()
    for step in (workflow.setup_stage, workflow.share_keys_stage, workflow.collect_masked_vectors_stage):
        assert step(grid, context, state), f"Flower halted the round in {step.__name__}"
    assert state.active_node_ids == set(survivors)
    in_grid, started = grid.seconds, time.perf_counter()
    assert workflow.unmask_stage(grid, context, state), "Flower halted the round in unmask_stage"
    server_unmask_s = time.perf_counter() - started - (grid.seconds - in_grid) - TimedFedAvg.seconds

    # The check: Flower's unmasked sum is the survivors' quantized inputs summed mod 2^32.
    q_total, (recon,) = unmasked[0]
    expected = np.zeros(args.dim, dtype=np.int64)
    for nid in survivors:
        expected += quantized[nid][1][0]
    assert np.array_equal(recon, expected & (2**32 - 1)), "the unmasked sum is not the survivors' sum"
    assert q_total == sum(quantized[nid][0] for nid in survivors)
    (aggregate,) = parameters_to_ndarrays(
        compat.arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
    )
    mean = np.mean([inputs[nid] for nid in survivors], axis=0, dtype=np.float64)
    assert np.abs(aggregate - mean).max() <= 2 * 8.0 / 2**22, "the aggregate is not the survivors' mean"

    print(json.dumps({
        "flwr": flwr.__version__,
        "clients": args.clients,
        "dim": args.dim,
        "dropout": args.dropout,
        "num_shares": num_shares,
        "threshold": threshold,
        "survivors": len(survivors),
        "server_unmask_s": server_unmask_s,
        "client_keys_s": clock.mean("_setup", nids),
        "client_share_s": clock.mean("_share_keys", nids),
        "client_mask_s": clock.mean("_collect_masked_vectors", survivors),
        "client_unmask_s": clock.mean("_unmask", survivors),
        "bytes_per_client": sum(grid.bytes[nid] for nid in survivors) / len(survivors),
        "dense_f32_bytes": 4 * args.dim,
    }))


if __name__ == "__main__":
    main()
