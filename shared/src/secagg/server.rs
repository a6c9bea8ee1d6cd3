//! The server's half of SecAgg+: it relays what clients send each other, keeps the running sum
//! of masked inputs, and unmasks only that sum. Every stage ends when all it waits for have
//! answered or at its deadline, whichever comes first; the driver supplies the time.

use std::collections::{BTreeMap, BTreeSet};

use x25519_dalek::{PublicKey, StaticSecret};

use super::crypto::{self, Purpose};
use super::quantize::dequantize_sum;
use super::shamir::{self, SHARE_BYTES, ShamirError, Share};
use super::{
    AdvertiseKeys, ConfigError, Graph, IncomingShares, MaskedInput, NeighbourKey, NeighbourKeys, SealedShares,
    SecAggConfig, ShareKeys, ShareKind, Stage, ToClient, ToServer, UnmaskRequest, UnmaskResponse, holder_x,
};

/// How long each stage waits for its stragglers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageTimeouts {
    pub advertise_keys_ms: u64,
    pub share_keys_ms: u64,
    /// Includes local training when the driver starts it on the shares' arrival.
    pub masked_input_ms: u64,
    /// An absolute end for the masked-input stage, whichever comes first: a round's own
    /// deadline, when clients train during the stage.
    pub masked_input_by_ms: Option<u64>,
    pub unmask_ms: u64,
}

impl Default for StageTimeouts {
    fn default() -> Self {
        StageTimeouts {
            advertise_keys_ms: 30_000,
            share_keys_ms: 30_000,
            masked_input_ms: 120_000,
            masked_input_by_ms: None,
            unmask_ms: 30_000,
        }
    }
}

/// A refused client message; refusing changes nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServerError {
    #[error("a {got:?} message arrived in stage {stage:?}")]
    OutOfStage { got: Stage, stage: Stage },
    #[error("the message is for round {got}, not {round}")]
    WrongRound { got: u64, round: u64 },
    #[error("client {0} has no part in this stage")]
    NotExpected(u32),
    #[error("client {0} already sent this stage's message")]
    AlreadyReceived(u32),
    #[error("client {0}'s public key is unusable")]
    BadKey(u32),
    #[error("client {from} may not send shares to {to} (not a live neighbour, or twice)")]
    Misaddressed { from: u32, to: u32 },
    #[error("client {client} sealed shares for {got} neighbours; {want} advertised keys")]
    MissingShares { client: u32, got: usize, want: usize },
    #[error("sealed shares are {got} bytes, not {want}")]
    SealedLength { got: usize, want: usize },
    #[error("the input has {got} values, the round takes {want}")]
    InputLength { got: usize, want: usize },
    #[error("value {index} is {value}, outside the ring 2^m")]
    OutOfRing { index: usize, value: u32 },
    #[error("client {0} revealed other shares than it was asked for")]
    UnrequestedShares(u32),
    #[error("client {client}'s share of {owner}'s secret is unusable")]
    BadShare { client: u32, owner: u32 },
}

/// Why a round ended without a sum. The clients' inputs stay masked.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Abandoned {
    #[error("stage {stage:?} ended with {have} clients, fewer than the threshold {need}")]
    TooFewClients { stage: Stage, have: usize, need: usize },
    #[error("{have} shares of client {owner}'s {kind:?} secret can be had, {need} are needed")]
    TooFewShares { owner: u32, kind: ShareKind, have: usize, need: usize },
    #[error("client {owner}'s {kind:?} shares do not rebuild a secret: {source}")]
    Reconstruction { owner: u32, kind: ShareKind, source: ShamirError },
}

/// What a finished round yields: the sum over the survivors, and nothing per client. Only the
/// server's unmasking makes one (its fields are private), so whoever holds a `SecAggSum` holds
/// a sum of at least t inputs, never one client's:
///
/// ```compile_fail
/// // Outside the SecAgg+ server nobody can pass one client's input off as a sum.
/// let forged = webfl_shared::secagg::SecAggSum { survivors: vec![0], quantized: vec![7], values: vec![0.5] };
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct SecAggSum {
    survivors: Vec<u32>,
    quantized: Vec<u32>,
    values: Vec<f32>,
}

impl SecAggSum {
    /// The clients whose inputs are in the sum, ascending.
    pub fn survivors(&self) -> &[u32] {
        &self.survivors
    }

    /// Σ q(x) mod 2^m (exact: the configuration leaves headroom for n inputs).
    pub fn quantized(&self) -> &[u32] {
        &self.quantized
    }

    /// The same sum dequantized: Σ x, up to clipping and quantization error.
    pub fn values(&self) -> &[f32] {
        &self.values
    }
}

/// How many clients took part in each stage so far: each count is of the clients whose message
/// for that stage the server accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageCounts {
    pub advertised: u32,
    pub shared: u32,
    pub masked: u32,
    pub unmasked: u32,
}

struct Advertised {
    relayed: NeighbourKey,
    mask: PublicKey,
}

/// The server's side of one SecAgg+ round.
pub struct SecAggServer {
    config: SecAggConfig,
    graph: Graph,
    timeouts: StageTimeouts,
    stage: Stage,
    deadline_ms: u64,
    /// U1: clients that advertised keys.
    advertised: BTreeMap<u32, Advertised>,
    /// U2: clients that shared keys; their sealed shares, by recipient.
    shared: BTreeSet<u32>,
    sealed_for: BTreeMap<u32, Vec<SealedShares>>,
    /// U3: clients whose masked input is in `masked_sum`.
    uploaded: BTreeSet<u32>,
    masked_sum: Vec<u32>,
    requests: BTreeMap<u32, UnmaskRequest>,
    responded: BTreeSet<u32>,
    self_mask_shares: BTreeMap<u32, Vec<Share>>,
    mask_key_shares: BTreeMap<u32, Vec<Share>>,
    outcome: Option<Result<SecAggSum, Abandoned>>,
}

impl SecAggServer {
    pub fn new(config: SecAggConfig, timeouts: StageTimeouts, now_ms: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(SecAggServer {
            graph: Graph::new(&config),
            deadline_ms: now_ms.saturating_add(timeouts.advertise_keys_ms),
            config,
            timeouts,
            stage: Stage::AdvertiseKeys,
            advertised: BTreeMap::new(),
            shared: BTreeSet::new(),
            sealed_for: BTreeMap::new(),
            uploaded: BTreeSet::new(),
            masked_sum: Vec::new(),
            requests: BTreeMap::new(),
            responded: BTreeSet::new(),
            self_mask_shares: BTreeMap::new(),
            mask_key_shares: BTreeMap::new(),
            outcome: None,
        })
    }

    pub fn config(&self) -> &SecAggConfig {
        &self.config
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// When the current stage ends if not all have answered; None once the round is over.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.outcome.is_none().then_some(self.deadline_ms)
    }

    /// Who has answered each stage so far (for records; nothing about any input).
    pub fn counts(&self) -> StageCounts {
        StageCounts {
            advertised: self.advertised.len() as u32,
            shared: self.shared.len() as u32,
            masked: self.uploaded.len() as u32,
            unmasked: self.responded.len() as u32,
        }
    }

    /// The sum, or why there is none; None while the round runs.
    pub fn outcome(&self) -> Option<Result<&SecAggSum, &Abandoned>> {
        self.outcome.as_ref().map(Result::as_ref)
    }

    pub fn into_outcome(self) -> Option<Result<SecAggSum, Abandoned>> {
        self.outcome
    }

    /// Ends the current stage if its deadline has passed. Returns the stage now.
    pub fn tick(&mut self, now_ms: u64) -> Stage {
        if self.outcome.is_none() && now_ms >= self.deadline_ms {
            self.close_stage(now_ms);
        }
        self.stage
    }

    /// Ends the current stage now, as its deadline would: for a driver that has heard from
    /// enough clients (a round's target) and will not wait for the rest. Returns the stage now.
    pub fn end_stage(&mut self, now_ms: u64) -> Stage {
        if self.outcome.is_none() {
            self.close_stage(now_ms);
        }
        self.stage
    }

    /// What `client` should be sent in the current stage, if it takes part in it.
    pub fn message_for(&self, client: u32) -> Option<ToClient> {
        let round = self.config.round;
        match self.stage {
            Stage::ShareKeys if self.advertised.contains_key(&client) => {
                let neighbours = (self.graph.neighbours(client).iter())
                    .filter_map(|v| self.advertised.get(v).map(|a| a.relayed.clone()))
                    .collect();
                Some(ToClient::ShareKeys(NeighbourKeys { round, neighbours }))
            }
            Stage::MaskedInput if self.shared.contains(&client) => {
                let shares = self.sealed_for.get(&client).cloned().unwrap_or_default();
                Some(ToClient::MaskedInput(IncomingShares { round, shares }))
            }
            Stage::Unmask => self.requests.get(&client).cloned().map(ToClient::Unmask),
            _ => None,
        }
    }

    /// Takes `client`'s message for the current stage (after applying the deadline at
    /// `now_ms`), and ends the stage once everyone it waits for has answered.
    pub fn handle(&mut self, client: u32, message: ToServer, now_ms: u64) -> Result<Stage, ServerError> {
        self.tick(now_ms);
        if message.stage() != self.stage {
            return Err(ServerError::OutOfStage { got: message.stage(), stage: self.stage });
        }
        let all_in = match message {
            ToServer::AdvertiseKeys(m) => self.take_keys(client, m)?,
            ToServer::ShareKeys(m) => self.take_shares(client, m)?,
            ToServer::MaskedInput(m) => self.take_masked_input(client, m)?,
            ToServer::Unmask(m) => self.take_unmask(client, m)?,
        };
        if all_in {
            self.close_stage(now_ms);
        }
        Ok(self.stage)
    }

    fn check_round(&self, round: u64) -> Result<(), ServerError> {
        match round == self.config.round {
            true => Ok(()),
            false => Err(ServerError::WrongRound { got: round, round: self.config.round }),
        }
    }

    fn take_keys(&mut self, client: u32, m: AdvertiseKeys) -> Result<bool, ServerError> {
        self.check_round(m.round)?;
        if client >= self.config.clients {
            return Err(ServerError::NotExpected(client));
        }
        if self.advertised.contains_key(&client) {
            return Err(ServerError::AlreadyReceived(client));
        }
        let parse = |bytes: &[u8]| crypto::parse_public_key(bytes).map_err(|_| ServerError::BadKey(client));
        parse(&m.sealing_key)?;
        let mask = parse(&m.mask_key)?;
        let relayed = NeighbourKey { client, sealing_key: m.sealing_key, mask_key: m.mask_key };
        self.advertised.insert(client, Advertised { relayed, mask });
        Ok(self.advertised.len() == self.config.clients as usize)
    }

    fn take_shares(&mut self, client: u32, m: ShareKeys) -> Result<bool, ServerError> {
        self.check_round(m.round)?;
        if !self.advertised.contains_key(&client) {
            return Err(ServerError::NotExpected(client));
        }
        if self.shared.contains(&client) {
            return Err(ServerError::AlreadyReceived(client));
        }
        // Exactly one sealed pair for every neighbour that advertised: every holder the
        // server will later count on must really have been given the shares.
        let mut want: BTreeSet<u32> =
            self.graph.neighbours(client).into_iter().filter(|v| self.advertised.contains_key(v)).collect();
        let want_len = want.len();
        let sealed_len = crypto::sealed_len(2 * SHARE_BYTES);
        for s in &m.shares {
            if s.from != client || !want.remove(&s.to) {
                return Err(ServerError::Misaddressed { from: s.from, to: s.to });
            }
            if s.sealed.len() != sealed_len {
                return Err(ServerError::SealedLength { got: s.sealed.len(), want: sealed_len });
            }
        }
        if !want.is_empty() {
            return Err(ServerError::MissingShares { client, got: m.shares.len(), want: want_len });
        }
        for s in m.shares {
            self.sealed_for.entry(s.to).or_default().push(s);
        }
        self.shared.insert(client);
        Ok(self.shared.len() == self.advertised.len())
    }

    fn take_masked_input(&mut self, client: u32, m: MaskedInput) -> Result<bool, ServerError> {
        self.check_round(m.round)?;
        if !self.shared.contains(&client) {
            return Err(ServerError::NotExpected(client));
        }
        if self.uploaded.contains(&client) {
            return Err(ServerError::AlreadyReceived(client));
        }
        if m.masked.len() != self.config.dim {
            return Err(ServerError::InputLength { got: m.masked.len(), want: self.config.dim });
        }
        let ring = self.config.ring_mask();
        if let Some((index, &value)) = m.masked.iter().enumerate().find(|&(_, &v)| v & !ring != 0) {
            return Err(ServerError::OutOfRing { index, value });
        }
        // Into the running sum at once: the server keeps no individual upload, masked or not.
        self.masked_sum.iter_mut().zip(&m.masked).for_each(|(s, &v)| *s = s.wrapping_add(v));
        self.uploaded.insert(client);
        Ok(self.uploaded.len() == self.shared.len())
    }

    fn take_unmask(&mut self, client: u32, m: UnmaskResponse) -> Result<bool, ServerError> {
        self.check_round(m.round)?;
        let request = self.requests.get(&client).ok_or(ServerError::NotExpected(client))?;
        if self.responded.contains(&client) {
            return Err(ServerError::AlreadyReceived(client));
        }
        let parse = |revealed: &[super::RevealedShare], asked: &[u32]| -> Result<Vec<(u32, Share)>, ServerError> {
            let mut owners: Vec<u32> = revealed.iter().map(|r| r.owner).collect();
            owners.sort_unstable();
            if owners != asked {
                return Err(ServerError::UnrequestedShares(client));
            }
            let parse_one = |r: &super::RevealedShare| {
                let share = Share::from_bytes(&r.share).ok().filter(|s| s.x == holder_x(client));
                share.map(|s| (r.owner, s)).ok_or(ServerError::BadShare { client, owner: r.owner })
            };
            revealed.iter().map(parse_one).collect()
        };
        let self_mask = parse(&m.self_mask_shares, &request.survivors)?;
        let mask_key = parse(&m.mask_key_shares, &request.dropped)?;
        for (owner, share) in self_mask {
            self.self_mask_shares.entry(owner).or_default().push(share);
        }
        for (owner, share) in mask_key {
            self.mask_key_shares.entry(owner).or_default().push(share);
        }
        self.responded.insert(client);
        Ok(self.responded.len() == self.requests.len())
    }

    fn close_stage(&mut self, now_ms: u64) {
        let need = self.config.threshold as usize;
        let (have, next, timeout) = match self.stage {
            Stage::AdvertiseKeys => (self.advertised.len(), Stage::ShareKeys, self.timeouts.share_keys_ms),
            Stage::ShareKeys => (self.shared.len(), Stage::MaskedInput, self.timeouts.masked_input_ms),
            Stage::MaskedInput => (self.uploaded.len(), Stage::Unmask, self.timeouts.unmask_ms),
            Stage::Unmask => {
                let outcome = self.unmask();
                return self.end(outcome);
            }
            Stage::Finished | Stage::Abandoned => return,
        };
        // Fewer than t clients can never be unmasked, and a sum of so few says too much.
        if have < need {
            return self.end(Err(Abandoned::TooFewClients { stage: self.stage, have, need }));
        }
        let mut deadline = now_ms.saturating_add(timeout);
        match next {
            Stage::MaskedInput => {
                self.masked_sum = vec![0; self.config.dim];
                deadline = deadline.min(self.timeouts.masked_input_by_ms.unwrap_or(u64::MAX));
            }
            Stage::Unmask => {
                if let Err(reason) = self.plan_unmask() {
                    return self.end(Err(reason));
                }
            }
            _ => {}
        }
        self.stage = next;
        self.deadline_ms = deadline;
    }

    fn end(&mut self, outcome: Result<SecAggSum, Abandoned>) {
        self.stage = if outcome.is_ok() { Stage::Finished } else { Stage::Abandoned };
        self.outcome = Some(outcome);
        // What remains is of no further use; the sum is in the outcome.
        self.sealed_for.clear();
        self.masked_sum = Vec::new();
        self.self_mask_shares.clear();
        self.mask_key_shares.clear();
    }

    /// Clients that shared keys but uploaded nothing, and whose pairwise masks are in some
    /// survivor's upload.
    fn dropped(&self) -> Vec<u32> {
        self.shared.difference(&self.uploaded).copied().collect()
    }

    /// Checks that every secret the unmasking needs still has t holders among the survivors,
    /// before anyone is asked to reveal anything; then words each survivor's request.
    fn plan_unmask(&mut self) -> Result<(), Abandoned> {
        let need = self.config.threshold as usize;
        let survivors_among = |v: u32| self.graph.neighbours(v).into_iter().filter(|u| self.uploaded.contains(u));
        for &owner in &self.uploaded {
            let have = survivors_among(owner).count() + 1;
            if have < need {
                return Err(Abandoned::TooFewShares { owner, kind: ShareKind::SelfMask, have, need });
            }
        }
        for owner in self.dropped() {
            let have = survivors_among(owner).count();
            if have < need {
                return Err(Abandoned::TooFewShares { owner, kind: ShareKind::MaskKey, have, need });
            }
        }
        let dropped: BTreeSet<u32> = self.dropped().into_iter().collect();
        for &client in &self.uploaded {
            let neighbours = self.graph.neighbours(client);
            let mut survivors: Vec<u32> = neighbours.iter().copied().filter(|v| self.uploaded.contains(v)).collect();
            survivors.push(client);
            survivors.sort_unstable();
            let dropped = neighbours.into_iter().filter(|v| dropped.contains(v)).collect();
            self.requests.insert(client, UnmaskRequest { round: self.config.round, survivors, dropped });
        }
        Ok(())
    }

    /// Rebuilds the survivors' self-mask seeds and the dropped clients' mask keys, and strips
    /// their masks from the sum: what is left is Σ q(x) over the survivors.
    fn unmask(&mut self) -> Result<SecAggSum, Abandoned> {
        let t = self.config.threshold as usize;
        let rebuild = |owner: u32, kind: ShareKind, shares: &BTreeMap<u32, Vec<Share>>| {
            let shares = shares.get(&owner).map(Vec::as_slice).unwrap_or_default();
            shamir::combine(shares, t).map_err(|source| match source {
                ShamirError::TooFewShares { have, need } => Abandoned::TooFewShares { owner, kind, have, need },
                source => Abandoned::Reconstruction { owner, kind, source },
            })
        };
        let mut seeds = Vec::with_capacity(self.uploaded.len());
        for &owner in &self.uploaded {
            // Each survivor added its self mask; subtract it.
            seeds.push((rebuild(owner, ShareKind::SelfMask, &self.self_mask_shares)?, false));
        }
        for owner in self.dropped() {
            let mask_key = StaticSecret::from(*rebuild(owner, ShareKind::MaskKey, &self.mask_key_shares)?);
            for survivor in self.graph.neighbours(owner).into_iter().filter(|u| self.uploaded.contains(u)) {
                let Some(advertised) = self.advertised.get(&survivor) else { continue };
                let round = self.config.round;
                let seed = crypto::agree(&mask_key, &advertised.mask, Purpose::PairwiseMask, round, owner, survivor);
                // The survivor added this mask if its id is the lower; undo whichever it did.
                seeds.push((seed, survivor > owner));
            }
        }
        let mut sum = std::mem::take(&mut self.masked_sum);
        for (seed, add) in &seeds {
            crypto::apply_mask(&mut sum, seed, *add);
        }
        let ring = self.config.ring_mask();
        sum.iter_mut().for_each(|v| *v &= ring);
        let (r, levels) = (self.config.clipping_range, self.config.quantization_levels);
        let values = dequantize_sum(&sum, self.uploaded.len(), r, levels);
        Ok(SecAggSum { survivors: self.uploaded.iter().copied().collect(), quantized: sum, values })
    }
}
