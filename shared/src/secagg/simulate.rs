//! A whole SecAgg+ round in one process: the clients and the server exchanging messages
//! directly, deadlines passing on a virtual clock. Tests use it, and so can a benchmark or
//! `webfl simulate`; it decides nothing itself — the machines do.

use super::{
    Abandoned, ClientError, ConfigError, SecAggClient, SecAggConfig, SecAggServer, SecAggSum, ServerError, Stage,
    StageTimeouts, ToClient, ToServer,
};

/// A benchmark's cohort: `clients` inputs of `dim` values uniform in ±0.1, and a share
/// `dropout` of the clients, drawn at random, vanishing after sharing their keys — the costly
/// case for the server, which must rebuild their pairwise masks. For [`simulate_to_unmask`].
pub fn benchmark_cohort(
    clients: u32,
    dim: usize,
    dropout: f64,
    rng: &mut impl rand::Rng,
) -> (Vec<Vec<f32>>, Vec<Option<Stage>>) {
    use rand::seq::SliceRandom as _;
    let inputs: Vec<Vec<f32>> =
        (0..clients).map(|_| (0..dim).map(|_| rng.random_range(-0.1f32..0.1)).collect()).collect();
    let mut order: Vec<usize> = (0..clients as usize).collect();
    order.shuffle(rng);
    let mut drop_at = vec![None; clients as usize];
    let dropped = ((dropout * f64::from(clients)).round() as usize).min(order.len());
    for &c in &order[..dropped] {
        drop_at[c] = Some(Stage::MaskedInput);
    }
    (inputs, drop_at)
}

/// Where an [`Observer`] that times client work keeps each stage: keys, shares, masking,
/// unmasking.
pub fn client_stage_slot(stage: Stage) -> usize {
    match stage {
        Stage::AdvertiseKeys => 0,
        Stage::ShareKeys => 1,
        Stage::MaskedInput => 2,
        _ => 3,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimulationError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{got} inputs and {drops} dropout entries for a cohort of {clients}")]
    Cohort { got: usize, drops: usize, clients: u32 },
    #[error("client {client} refused: {source}")]
    Client { client: u32, source: ClientError },
    #[error("the server refused client {client}: {source}")]
    Server { client: u32, source: ServerError },
    #[error("round abandoned: {0}")]
    Abandoned(Abandoned),
}

/// What a driver may watch in a simulated round: each client's work per stage (to time it; the
/// shared crate reads no clock) and every message either way (to count its bytes).
pub trait Observer {
    /// Runs client `client`'s computation for `stage`.
    fn client_work<T>(&mut self, _client: u32, _stage: Stage, work: impl FnOnce() -> T) -> T {
        work()
    }
    fn to_server(&mut self, _client: u32, _message: &ToServer) {}
    fn to_client(&mut self, _client: u32, _message: &ToClient) {}
}

/// Watches nothing.
pub struct Unobserved;
impl Observer for Unobserved {}

/// A simulated round with every unmask response collected but not yet handed to the server:
/// [`PendingUnmask::finish`] is the server's unmasking alone, for timing it.
pub struct PendingUnmask {
    server: SecAggServer,
    responses: Vec<(u32, ToServer)>,
    now_ms: u64,
}

impl PendingUnmask {
    pub fn finish(mut self) -> Result<SecAggSum, SimulationError> {
        for (client, message) in self.responses {
            self.server
                .handle(client, message, self.now_ms)
                .map_err(|source| SimulationError::Server { client, source })?;
        }
        let_deadline_pass(&mut self.server, &mut self.now_ms, Stage::Unmask);
        match self.server.into_outcome() {
            Some(Ok(sum)) => Ok(sum),
            Some(Err(reason)) => Err(SimulationError::Abandoned(reason)),
            None => unreachable!("a closed unmask stage leaves an outcome"),
        }
    }
}

/// One whole round in process: client `i` contributes `inputs[i]` unless `drop_at[i]` names the
/// stage whose message it never sends. The server's deadlines pass on a virtual clock.
pub fn simulate_round(
    config: &SecAggConfig,
    inputs: &[Vec<f32>],
    drop_at: &[Option<Stage>],
    rng: &mut impl rand::CryptoRng,
) -> Result<SecAggSum, SimulationError> {
    simulate_to_unmask(config, inputs, drop_at, rng, &mut Unobserved)?.finish()
}

/// [`simulate_round`] up to the unmask responses, which are held back (see [`PendingUnmask`]).
pub fn simulate_to_unmask(
    config: &SecAggConfig,
    inputs: &[Vec<f32>],
    drop_at: &[Option<Stage>],
    rng: &mut impl rand::CryptoRng,
    observer: &mut impl Observer,
) -> Result<PendingUnmask, SimulationError> {
    config.validate()?;
    if inputs.len() != config.clients as usize || drop_at.len() != inputs.len() {
        return Err(SimulationError::Cohort { got: inputs.len(), drops: drop_at.len(), clients: config.clients });
    }
    let silent_at = |client: u32, stage| drop_at[client as usize] == Some(stage);
    let rejected = |client| move |source| SimulationError::Server { client, source };
    let mut now_ms = 0;
    let mut server = SecAggServer::new(config.clone(), StageTimeouts::default(), now_ms)?;
    let mut clients = Vec::new();
    for client in (0..config.clients).filter(|&c| !silent_at(c, Stage::AdvertiseKeys)) {
        let (machine, keys) = observer
            .client_work(client, Stage::AdvertiseKeys, || SecAggClient::new(config.clone(), client, rng))
            .map_err(|source| SimulationError::Client { client, source })?;
        let message = ToServer::AdvertiseKeys(keys);
        observer.to_server(client, &message);
        server.handle(client, message, now_ms).map_err(rejected(client))?;
        clients.push(machine);
    }
    let mut responses = Vec::new();
    for (previous, stage) in [
        (Stage::AdvertiseKeys, Stage::ShareKeys),
        (Stage::ShareKeys, Stage::MaskedInput),
        (Stage::MaskedInput, Stage::Unmask),
    ] {
        let_deadline_pass(&mut server, &mut now_ms, previous);
        if let Some(Err(reason)) = server.outcome() {
            return Err(SimulationError::Abandoned(reason.clone()));
        }
        let mut answered = Vec::new();
        for machine in clients.iter_mut().filter(|c| !silent_at(c.id(), stage)) {
            let id = machine.id();
            let Some(message) = server.message_for(id) else { continue };
            observer.to_client(id, &message);
            let reply = observer.client_work(id, stage, || match message {
                ToClient::ShareKeys(keys) => machine.share_keys(&keys, rng).map(ToServer::ShareKeys),
                ToClient::MaskedInput(shares) => {
                    machine.mask_input(&shares, &inputs[id as usize], rng).map(ToServer::MaskedInput)
                }
                ToClient::Unmask(request) => machine.unmask(&request).map(ToServer::Unmask),
            });
            if let Ok(message) = &reply {
                observer.to_server(id, message);
            }
            match reply {
                // A client left with too few neighbours cannot take part: to the server it has
                // dropped out, as it would have over a network.
                Err(ClientError::TooFewNeighbours { .. }) => continue,
                Err(source) => return Err(SimulationError::Client { client: id, source }),
                Ok(message @ ToServer::Unmask(_)) => responses.push((id, message)),
                Ok(message) => {
                    server.handle(id, message, now_ms).map_err(rejected(id))?;
                }
            }
            answered.push(id);
        }
        clients.retain(|c| answered.contains(&c.id()));
    }
    Ok(PendingUnmask { server, responses, now_ms })
}

/// Runs the virtual clock to the deadline of `stage` if the server is still waiting in it.
fn let_deadline_pass(server: &mut SecAggServer, now_ms: &mut u64, stage: Stage) {
    if server.stage() == stage {
        *now_ms = server.deadline_ms().unwrap_or(*now_ms);
        server.tick(*now_ms);
    }
}
