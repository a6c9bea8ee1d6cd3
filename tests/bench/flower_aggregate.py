"""Times Flower's server-side FedAvg on updates shaped like webfl's CNN, in the units
`webfl bench server` reports: GB/s of f32 update input (4 bytes per parameter per update).

- aggregate_inplace: flwr.server.strategy.aggregate.aggregate_inplace on FitRes results, which
  deserialises each client's Parameters (numpy .npy bytes) and accumulates the example-weighted
  mean in place: Flower's decode + aggregate, comparable to webfl's
  "decode+aggregate cnn safetensors".
- numpy weighted sum: the same mean over already decoded float32 arrays (in-place
  multiply-add in numpy), comparable to webfl's "aggregate cnn f32".

Usage: python tests/bench/flower_aggregate.py [--updates 100] [--repeats 5] [--json]
"""

import argparse
import inspect
import json
import time

import numpy as np
import flwr
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.server.strategy.aggregate import aggregate_inplace

# webfl's built-in `cnn` for 1×28×28 inputs and 10 classes (McMahan et al. 2017), as PyTorch
# state_dict shapes: conv 5×5×32, conv 5×5×64, dense 3136→512, dense 512→10.
CNN_SHAPES = [
    (32, 1, 5, 5), (32,),
    (64, 32, 5, 5), (64,),
    (512, 3136), (512,),
    (10, 512), (10,),
]


def best_of(repeats, fn):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    rng = np.random.default_rng(7)
    clients = [
        [rng.uniform(-0.01, 0.01, size=s).astype(np.float32) for s in CNN_SHAPES]
        for _ in range(args.updates)
    ]
    params = sum(int(np.prod(s)) for s in CNN_SHAPES)
    input_bytes = 4 * params * args.updates
    ok = Status(code=Code.OK, message="")
    # The client proxy is not used by aggregate_inplace.
    results = [
        (None, FitRes(status=ok, parameters=ndarrays_to_parameters(c), num_examples=i + 1, metrics={}))
        for i, c in enumerate(clients)
    ]

    def numpy_weighted_sum():
        total = sum(range(1, args.updates + 1))
        acc = [a * (1 / total) for a in clients[0]]
        for i, c in enumerate(clients[1:], start=2):
            for a, x in zip(acc, c):
                a += x * (i / total)
        return acc

    rows = [
        ("flower aggregate_inplace cnn (decode+aggregate)", input_bytes / best_of(args.repeats, lambda: aggregate_inplace(results)) / 1e9),
        ("numpy weighted sum cnn f32 (aggregate)", input_bytes / best_of(args.repeats, numpy_weighted_sum) / 1e9),
    ]
    if args.json:
        for case, value in rows:
            print(json.dumps({"case": case, "value": value, "unit": "GB/s"}))
    else:
        print(f"flwr {flwr.__version__}, numpy {np.__version__}; {args.updates} updates of {params} parameters "
              f"({input_bytes / 1e6:.0f} MB); aggregate_inplace{inspect.signature(aggregate_inplace)}")
        for case, value in rows:
            print(f"{case:<52} {value:>12.2f} GB/s")


if __name__ == "__main__":
    main()
