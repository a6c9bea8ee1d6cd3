//! How simulated clients behave: how fast they train, how long the network takes, and whether a
//! selected client vanishes mid-round (in a secure round: at which SecAgg+ stage). Every draw
//! comes from the seed's `Behaviour` stream keyed by client (and round), so it does not depend on
//! the order events happen in.

use std::fmt;
use std::str::FromStr;

use rand::Rng as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use webfl_shared::participant::Attack;
use webfl_shared::rng::{self, Stream};
use webfl_shared::secagg::Stage;

use crate::config::SimulationConfig;

/// The spread of client speeds: `fixed` or `lognormal:SIGMA`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ClientSpeed {
    /// Every client trains at the base speed.
    Fixed,
    /// Speed factor e^N(0, σ²) per client.
    LogNormal { sigma: f64 },
}

/// `FRACTION:FACTOR`: that share of clients is FACTOR× slower; `none` is `0:1`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stragglers {
    pub fraction: f64,
    pub factor: f64,
}

impl FromStr for ClientSpeed {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "fixed" {
            return Ok(Self::Fixed);
        }
        let sigma = s
            .strip_prefix("lognormal:")
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("client speed {s:?}: expected fixed or lognormal:SIGMA with SIGMA >= 0"))?;
        Ok(Self::LogNormal { sigma })
    }
}

impl fmt::Display for ClientSpeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed => f.write_str("fixed"),
            Self::LogNormal { sigma } => write!(f, "lognormal:{sigma}"),
        }
    }
}

impl FromStr for Stragglers {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "none" {
            return Ok(Self { fraction: 0.0, factor: 1.0 });
        }
        let bad = || format!("stragglers {s:?}: expected FRACTION:FACTOR (e.g. 0.2:10) or none");
        let (fraction, factor) = s.split_once(':').ok_or_else(bad)?;
        let fraction: f64 = fraction.trim().parse().map_err(|_| bad())?;
        let factor: f64 = factor.trim().parse().map_err(|_| bad())?;
        if !((0.0..=1.0).contains(&fraction) && factor.is_finite() && factor >= 1.0) {
            return Err(format!("{}: FRACTION in [0, 1], FACTOR >= 1", bad()));
        }
        Ok(Self { fraction, factor })
    }
}

impl fmt::Display for Stragglers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.fraction == 0.0 { f.write_str("none") } else { write!(f, "{}:{}", self.fraction, self.factor) }
    }
}

/// Byzantine clients: a share of the population that makes an [`Attack`] on every update
/// (`FRACTION:sign-flip[:SCALE]`, `FRACTION:scale:FACTOR`), or `none`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Byzantine {
    pub fraction: f64,
    pub attack: Option<Attack>,
}

impl Byzantine {
    pub const NONE: Self = Self { fraction: 0.0, attack: None };
}

impl FromStr for Byzantine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "none" {
            return Ok(Self::NONE);
        }
        let bad = |why: String| format!("byzantine {s:?}: expected FRACTION:ATTACK or none ({why})");
        let (fraction, attack) = s.split_once(':').ok_or_else(|| bad("no attack".into()))?;
        let fraction: f64 = fraction.trim().parse().map_err(|_| bad("FRACTION is a number".into()))?;
        if !(0.0..=1.0).contains(&fraction) {
            return Err(bad("FRACTION in [0, 1]".into()));
        }
        Ok(Self { fraction, attack: Some(attack.parse().map_err(bad)?) })
    }
}

impl fmt::Display for Byzantine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.attack {
            Some(attack) if self.fraction > 0.0 => write!(f, "{}:{attack}", self.fraction),
            _ => f.write_str("none"),
        }
    }
}

macro_rules! serde_as_string {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
serde_as_string!(ClientSpeed, Stragglers, Byzantine);

/// One client's fixed traits.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Examples trained per second.
    pub samples_per_s: f64,
    pub straggler: bool,
    /// Uploads a corrupted update (`--attack`).
    pub byzantine: bool,
}

/// The behaviour model of a run.
#[derive(Clone, Debug)]
pub struct Behaviour {
    seed: u64,
    cfg: SimulationConfig,
}

/// Microseconds of virtual time.
pub type Micros = u64;

/// A selected client vanishing mid-round (a closed tab, a sleeping laptop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dropout {
    /// How long until it comes back.
    pub back_after: Micros,
    /// In a secure round, the first stage whose message it never sends: before advertising its
    /// keys, after them, after sharing its secrets (it never trains), or after uploading its
    /// masked input (the server must then rebuild its pairwise masks). A plain round's client
    /// vanishes at training, whatever this says.
    pub stage: Stage,
}

/// The stages a secure round's client may vanish at, equally likely.
const DROPOUT_STAGES: [Stage; 4] = [Stage::AdvertiseKeys, Stage::ShareKeys, Stage::MaskedInput, Stage::Unmask];

impl Behaviour {
    pub fn new(seed: u64, cfg: &SimulationConfig) -> Self {
        Self { seed, cfg: cfg.clone() }
    }

    /// Client `client`'s speed and whether it is a straggler.
    pub fn profile(&self, client: usize) -> Profile {
        let mut r = rng::stream(self.seed, Stream::Behaviour, &[0, client as u64]);
        let factor = match self.cfg.client_speed {
            ClientSpeed::Fixed => 1.0,
            ClientSpeed::LogNormal { sigma } => {
                // Box–Muller.
                let (u1, u2): (f64, f64) = (r.random::<f64>().max(f64::MIN_POSITIVE), r.random());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                (sigma * z).exp()
            }
        };
        let straggler = r.random::<f64>() < self.cfg.stragglers.fraction;
        let slow = if straggler { self.cfg.stragglers.factor } else { 1.0 };
        // A stream of its own, so adding attackers leaves every other draw of a run as it was.
        let byzantine =
            rng::stream(self.seed, Stream::Behaviour, &[2, client as u64]).random::<f64>() < self.cfg.attack.fraction;
        Profile { samples_per_s: self.cfg.samples_per_s * factor / slow, straggler, byzantine }
    }

    /// The attack client `client` makes on its updates, if it is Byzantine.
    pub fn attack_of(&self, client: usize) -> Option<Attack> {
        self.profile(client).byzantine.then_some(self.cfg.attack.attack).flatten()
    }

    /// Local training time of `examples` examples for `epochs` epochs.
    pub fn train_time(&self, profile: &Profile, examples: usize, epochs: usize) -> Micros {
        secs((examples * epochs) as f64 / profile.samples_per_s)
    }

    /// One-way latency: half the round trip.
    pub fn one_way(&self) -> Micros {
        secs(self.cfg.latency_ms / 2000.0)
    }

    /// Time to move `bytes` over the client's link.
    pub fn transfer(&self, bytes: usize) -> Micros {
        secs(bytes as f64 * 8.0 / (self.cfg.bandwidth_mbps * 1e6))
    }

    /// Whether `client` vanishes in `round`: after how long it comes back (between one and two
    /// deadlines) and at which stage of a secure round.
    pub fn dropout(&self, client: usize, round: u64, deadline_ms: u64) -> Option<Dropout> {
        if self.cfg.dropout <= 0.0 {
            return None;
        }
        let mut r = rng::stream(self.seed, Stream::Behaviour, &[1, round, client as u64]);
        (r.random::<f64>() < self.cfg.dropout).then(|| {
            let back_after = (deadline_ms as f64 * (1.0 + r.random::<f64>()) * 1000.0) as Micros;
            // Drawn last, so plain rounds draw what they always drew.
            Dropout { back_after, stage: DROPOUT_STAGES[r.random_range(0..DROPOUT_STAGES.len())] }
        })
    }
}

fn secs(s: f64) -> Micros {
    (s * 1e6).round().max(0.0) as Micros
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviour_settings_parse_and_print_back() {
        for s in ["fixed", "lognormal:0.5"] {
            assert_eq!(s.parse::<ClientSpeed>().unwrap().to_string(), s);
        }
        for s in ["none", "0.2:10"] {
            assert_eq!(s.parse::<Stragglers>().unwrap().to_string(), s);
        }
        for s in ["none", "0.2:sign-flip:4", "0.1:scale:10"] {
            assert_eq!(s.parse::<Byzantine>().unwrap().to_string(), s);
        }
        assert!("0.2".parse::<Byzantine>().is_err());
        assert!("1.5:sign-flip".parse::<Byzantine>().is_err());
        assert!("0.2".parse::<Stragglers>().is_err());
        assert!("2:10".parse::<Stragglers>().is_err());
        assert!("lognormal:-1".parse::<ClientSpeed>().is_err());
    }

    #[test]
    fn a_straggler_share_of_clients_is_slower_by_its_factor() {
        let cfg = SimulationConfig { stragglers: "0.2:10".parse().unwrap(), ..SimulationConfig::default() };
        let attacked =
            Behaviour::new(3, &SimulationConfig { attack: "0.2:sign-flip:4".parse().unwrap(), ..cfg.clone() });
        let byzantine = (0..1000).filter(|&c| attacked.profile(c).byzantine).count();
        assert!((150..250).contains(&byzantine), "{byzantine} Byzantine of 1000");
        for c in 0..50 {
            let (plain, with) = (Behaviour::new(3, &cfg).profile(c), attacked.profile(c));
            assert_eq!((plain.samples_per_s, plain.straggler), (with.samples_per_s, with.straggler));
        }
        let b = Behaviour::new(3, &cfg);
        let profiles: Vec<Profile> = (0..1000).map(|c| b.profile(c)).collect();
        let slow = profiles.iter().filter(|p| p.straggler).count();
        assert!((150..250).contains(&slow), "{slow} stragglers of 1000");
        for p in &profiles {
            assert_eq!(p.samples_per_s, if p.straggler { 200.0 } else { 2000.0 });
        }
        assert_eq!(b.profile(7), Behaviour::new(3, &cfg).profile(7));
    }

    #[test]
    fn dropouts_hit_their_share_of_clients_at_every_secure_stage() {
        let b = Behaviour::new(4, &SimulationConfig { dropout: 0.25, ..SimulationConfig::default() });
        let drops: Vec<Dropout> = (0..4000).filter_map(|c| b.dropout(c, 3, 10_000)).collect();
        assert!((800..1200).contains(&drops.len()), "{} of 4000 dropped", drops.len());
        for stage in DROPOUT_STAGES {
            let n = drops.iter().filter(|d| d.stage == stage).count();
            assert!((150..350).contains(&n), "{n} dropped at {stage:?}");
        }
        assert!(drops.iter().all(|d| (10_000_000..=20_000_000).contains(&d.back_after)));
        assert_eq!(b.dropout(17, 3, 10_000), b.dropout(17, 3, 10_000));
    }
}
