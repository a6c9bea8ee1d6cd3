//! The client's half of SecAgg+: one machine per client and round. Each method answers one
//! server message; a refused message leaves the machine as it was.

use std::collections::BTreeMap;

use rand::CryptoRng;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::crypto::{self, Purpose};
use super::quantize::{QuantizeError, quantize};
use super::shamir::{self, SHARE_BYTES, Share};
use super::{
    AdvertiseKeys, ConfigError, Graph, IncomingShares, MaskedInput, NeighbourKeys, RevealedShare, SealedShares,
    SecAggConfig, ShareKeys, ShareKind, Stage, UnmaskRequest, UnmaskResponse, holder_x,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("client {0} is not in the cohort")]
    NotInCohort(u32),
    #[error("a {got:?} message arrived while the client awaits {awaiting:?}")]
    OutOfOrder { got: Stage, awaiting: Stage },
    #[error("the message is for round {got}, not {round}")]
    WrongRound { got: u64, round: u64 },
    #[error("client {0} is not a neighbour")]
    NotANeighbour(u32),
    #[error("client {0} is named twice")]
    Repeated(u32),
    #[error("client {0}'s public key is unusable")]
    BadKey(u32),
    #[error("sealed shares addressed to client {0} reached another")]
    Misaddressed(u32),
    #[error("{have} share holders are left in the neighbourhood, {need} are needed")]
    TooFewNeighbours { have: usize, need: usize },
    #[error("the shares from client {0} failed authentication")]
    Unauthentic(u32),
    #[error("the shares from client {0} are malformed")]
    MalformedShares(u32),
    #[error("the input has {got} values, the round takes {want}")]
    InputLength { got: usize, want: usize },
    #[error(transparent)]
    Quantize(#[from] QuantizeError),
    #[error("client {0} is named both as a survivor and as dropped")]
    NamedBothWays(u32),
    #[error("this client is alive; it will not reveal its own mask key")]
    NamedSelfDropped,
    #[error("client {neighbour}'s {revealed:?} share is already revealed; the other one never will be")]
    OtherShareRevealed { neighbour: u32, revealed: ShareKind },
    #[error("{have} survivors named, fewer than the threshold {need}")]
    TooFewSurvivors { have: usize, need: usize },
}

/// This holder's shares of one owner's two secrets.
#[derive(Clone)]
struct HeldShares {
    self_mask: Share,
    mask_key: Share,
}

const HELD_BYTES: usize = 2 * SHARE_BYTES;

impl HeldShares {
    fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(HELD_BYTES));
        out.extend_from_slice(&*self.self_mask.to_bytes());
        out.extend_from_slice(&*self.mask_key.to_bytes());
        out
    }

    /// Both shares, and both made for `holder` (so no other holder's shares can be passed off).
    fn from_bytes(bytes: &[u8], holder: u32) -> Option<HeldShares> {
        let (a, b) = bytes.split_at_checked(SHARE_BYTES)?;
        let held = HeldShares { self_mask: Share::from_bytes(a).ok()?, mask_key: Share::from_bytes(b).ok()? };
        let x = holder_x(holder);
        (held.self_mask.x == x && held.mask_key.x == x).then_some(held)
    }
}

struct PeerKeys {
    sealing: PublicKey,
    mask: PublicKey,
}

enum State {
    KeysAdvertised {
        sealing: StaticSecret,
        mask: StaticSecret,
    },
    SharesSent {
        sealing: StaticSecret,
        mask: StaticSecret,
        self_mask_seed: Zeroizing<[u8; 32]>,
        peers: BTreeMap<u32, PeerKeys>,
        /// Its own shares, under its own id.
        held: BTreeMap<u32, HeldShares>,
    },
    /// Both key pairs and the seed are gone (zeroized): only the shares it holds remain, and
    /// which kind it has revealed for whom.
    InputMasked {
        held: BTreeMap<u32, HeldShares>,
        revealed: BTreeMap<u32, ShareKind>,
    },
}

/// One client's side of one SecAgg+ round.
pub struct SecAggClient {
    config: SecAggConfig,
    id: u32,
    /// From the graph, ascending: the only clients this one exchanges anything with.
    neighbours: Vec<u32>,
    state: State,
}

impl SecAggClient {
    /// A client for `config`'s round and the keys it advertises (stage 1).
    pub fn new(config: SecAggConfig, id: u32, rng: &mut impl CryptoRng) -> Result<(Self, AdvertiseKeys), ClientError> {
        config.validate()?;
        if id >= config.clients {
            return Err(ClientError::NotInCohort(id));
        }
        let (sealing, mask) = (crypto::new_secret(rng), crypto::new_secret(rng));
        let advertised = AdvertiseKeys {
            round: config.round,
            sealing_key: PublicKey::from(&sealing).to_bytes().to_vec(),
            mask_key: PublicKey::from(&mask).to_bytes().to_vec(),
        };
        let neighbours = Graph::new(&config).neighbours(id);
        Ok((SecAggClient { config, id, neighbours, state: State::KeysAdvertised { sealing, mask } }, advertised))
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// The stage whose server message this client answers next.
    pub fn awaiting(&self) -> Stage {
        match self.state {
            State::KeysAdvertised { .. } => Stage::ShareKeys,
            State::SharesSent { .. } => Stage::MaskedInput,
            State::InputMasked { .. } => Stage::Unmask,
        }
    }

    fn check_round(&self, round: u64) -> Result<(), ClientError> {
        match round == self.config.round {
            true => Ok(()),
            false => Err(ClientError::WrongRound { got: round, round: self.config.round }),
        }
    }

    fn out_of_order(&self, got: Stage) -> ClientError {
        ClientError::OutOfOrder { got, awaiting: self.awaiting() }
    }

    /// Stage 2: shares the self-mask seed and the mask key among the neighbours that advertised
    /// (and itself), each neighbour's pair sealed for it alone.
    pub fn share_keys(&mut self, message: &NeighbourKeys, rng: &mut impl CryptoRng) -> Result<ShareKeys, ClientError> {
        self.check_round(message.round)?;
        let State::KeysAdvertised { sealing, mask } = &self.state else {
            return Err(self.out_of_order(Stage::ShareKeys));
        };
        let mut peers = BTreeMap::new();
        for key in &message.neighbours {
            if key.client == self.id || self.neighbours.binary_search(&key.client).is_err() {
                return Err(ClientError::NotANeighbour(key.client));
            }
            let parse = |bytes: &[u8]| crypto::parse_public_key(bytes).map_err(|_| ClientError::BadKey(key.client));
            let keys = PeerKeys { sealing: parse(&key.sealing_key)?, mask: parse(&key.mask_key)? };
            if peers.insert(key.client, keys).is_some() {
                return Err(ClientError::Repeated(key.client));
            }
        }
        let threshold = self.config.threshold as usize;
        if peers.len() + 1 < threshold {
            return Err(ClientError::TooFewNeighbours { have: peers.len() + 1, need: threshold });
        }

        let mut self_mask_seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(self_mask_seed.as_mut());
        let holders: Vec<u32> = std::iter::once(self.id).chain(peers.keys().copied()).collect();
        let xs: Vec<u64> = holders.iter().map(|&h| holder_x(h)).collect();
        let seed_shares = shamir::split(&self_mask_seed, threshold, &xs, rng);
        let key_shares = shamir::split(&Zeroizing::new(mask.to_bytes()), threshold, &xs, rng);
        let mut held = BTreeMap::new();
        let mut shares = Vec::with_capacity(peers.len());
        for ((holder, self_mask), mask_key) in holders.into_iter().zip(seed_shares).zip(key_shares) {
            let pair = HeldShares { self_mask, mask_key };
            match peers.get(&holder) {
                None => {
                    held.insert(holder, pair);
                }
                Some(peer) => {
                    let round = self.config.round;
                    let key = crypto::agree(sealing, &peer.sealing, Purpose::ShareSealing, round, self.id, holder);
                    let sealed = crypto::seal(&key, round, self.id, holder, &pair.to_bytes(), rng);
                    shares.push(SealedShares { from: self.id, to: holder, sealed });
                }
            }
        }
        let (sealing, mask) = (sealing.clone(), mask.clone());
        self.state = State::SharesSent { sealing, mask, self_mask_seed, peers, held };
        Ok(ShareKeys { round: self.config.round, shares })
    }

    /// Stage 3: opens the shares its neighbours sealed for it, and uploads its input quantized
    /// and masked with its self mask and one pairwise mask per neighbour that sent shares.
    pub fn mask_input(
        &mut self,
        message: &IncomingShares,
        input: &[f32],
        rng: &mut impl CryptoRng,
    ) -> Result<MaskedInput, ClientError> {
        self.check_round(message.round)?;
        let State::SharesSent { sealing, mask, self_mask_seed, peers, held } = &self.state else {
            return Err(self.out_of_order(Stage::MaskedInput));
        };
        if input.len() != self.config.dim {
            return Err(ClientError::InputLength { got: input.len(), want: self.config.dim });
        }
        let round = self.config.round;
        let mut held = held.clone();
        let mut pairwise = Vec::with_capacity(message.shares.len());
        for sealed in &message.shares {
            if sealed.to != self.id {
                return Err(ClientError::Misaddressed(sealed.to));
            }
            let peer = peers.get(&sealed.from).ok_or(ClientError::NotANeighbour(sealed.from))?;
            let key = crypto::agree(sealing, &peer.sealing, Purpose::ShareSealing, round, sealed.from, self.id);
            let plaintext = crypto::open(&key, round, sealed.from, self.id, &sealed.sealed)
                .map_err(|_| ClientError::Unauthentic(sealed.from))?;
            let pair = HeldShares::from_bytes(&plaintext, self.id).ok_or(ClientError::MalformedShares(sealed.from))?;
            if held.insert(sealed.from, pair).is_some() {
                return Err(ClientError::Repeated(sealed.from));
            }
            pairwise.push((sealed.from, &peer.mask));
        }
        let threshold = self.config.threshold as usize;
        if held.len() < threshold {
            return Err(ClientError::TooFewNeighbours { have: held.len(), need: threshold });
        }

        let mut masked = quantize(input, self.config.clipping_range, self.config.quantization_levels, rng)?;
        crypto::apply_mask(&mut masked, self_mask_seed, true);
        for (neighbour, public) in pairwise {
            let seed = crypto::agree(mask, public, Purpose::PairwiseMask, round, self.id, neighbour);
            // The lower id adds, the higher subtracts: the pair cancels in the sum.
            crypto::apply_mask(&mut masked, &seed, self.id < neighbour);
        }
        let ring = self.config.ring_mask();
        masked.iter_mut().for_each(|v| *v &= ring);
        self.state = State::InputMasked { held, revealed: BTreeMap::new() };
        Ok(MaskedInput { round, masked })
    }

    /// Stage 4: reveals self-mask shares of the named survivors and mask-key shares of the
    /// named dropped neighbours — never both kinds for one neighbour, over any number of
    /// requests. Asking again for what was revealed before is answered again (a lost reply).
    pub fn unmask(&mut self, request: &UnmaskRequest) -> Result<UnmaskResponse, ClientError> {
        self.check_round(request.round)?;
        let awaiting = self.awaiting();
        let State::InputMasked { held, revealed } = &mut self.state else {
            return Err(ClientError::OutOfOrder { got: Stage::Unmask, awaiting });
        };
        if let Some(&both) = request.dropped.iter().find(|v| request.survivors.contains(v)) {
            return Err(ClientError::NamedBothWays(both));
        }
        if request.dropped.contains(&self.id) {
            return Err(ClientError::NamedSelfDropped);
        }
        let asked = |kind| move |&owner: &u32| (owner, kind);
        let wanted: Vec<(u32, ShareKind)> = (request.survivors.iter().map(asked(ShareKind::SelfMask)))
            .chain(request.dropped.iter().map(asked(ShareKind::MaskKey)))
            .collect();
        let mut named = std::collections::BTreeSet::new();
        for &(owner, kind) in &wanted {
            if !named.insert(owner) {
                return Err(ClientError::Repeated(owner));
            }
            if !held.contains_key(&owner) {
                return Err(ClientError::NotANeighbour(owner));
            }
            if let Some(&before) = revealed.get(&owner).filter(|&&before| before != kind) {
                return Err(ClientError::OtherShareRevealed { neighbour: owner, revealed: before });
            }
        }
        let threshold = self.config.threshold as usize;
        if request.survivors.len() < threshold {
            return Err(ClientError::TooFewSurvivors { have: request.survivors.len(), need: threshold });
        }

        let mut response =
            UnmaskResponse { round: request.round, self_mask_shares: Vec::new(), mask_key_shares: Vec::new() };
        for (owner, kind) in wanted {
            let Some(pair) = held.get(&owner) else { continue };
            revealed.insert(owner, kind);
            let (share, list) = match kind {
                ShareKind::SelfMask => (&pair.self_mask, &mut response.self_mask_shares),
                ShareKind::MaskKey => (&pair.mask_key, &mut response.mask_key_shares),
            };
            list.push(RevealedShare { owner, share: share.to_bytes().to_vec() });
        }
        Ok(response)
    }
}
