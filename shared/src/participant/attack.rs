//! A Byzantine participant, for robustness tests and demonstrations: it trains honestly and then
//! reports `multiplier · Δ` instead of its update Δ. The simulator's attacking share of clients
//! and a browser page opened with `?attack=…` use this one definition, so both lie the same way.

use std::fmt;
use std::str::FromStr;

use crate::params::Params;

/// `sign-flip[:SCALE]` uploads −SCALE·Δ (SCALE 1 by default); `scale:FACTOR` uploads FACTOR·Δ.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attack {
    pub multiplier: f32,
}

impl Attack {
    /// Replaces the honest update with the attack's.
    pub fn corrupt(&self, delta: &mut Params) {
        for d in delta.as_mut_slice() {
            *d *= self.multiplier;
        }
    }
}

impl FromStr for Attack {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("attack {s:?}: expected sign-flip[:SCALE] or scale:FACTOR");
        let (kind, number) = match s.trim().split_once(':') {
            Some((kind, number)) => (kind, Some(number.trim().parse::<f32>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        let multiplier = match (kind, number) {
            ("sign-flip", scale) => -scale.unwrap_or(1.0),
            ("scale", Some(factor)) => factor,
            _ => return Err(bad()),
        };
        if !multiplier.is_finite() {
            return Err(bad());
        }
        Ok(Self { multiplier })
    }
}

impl fmt::Display for Attack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.multiplier < 0.0 {
            write!(f, "sign-flip:{}", -self.multiplier)
        } else {
            write!(f, "scale:{}", self.multiplier)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attacks_parse_print_back_and_scale_the_update() {
        assert_eq!("sign-flip".parse::<Attack>().unwrap().multiplier, -1.0);
        for s in ["sign-flip:4", "scale:10", "scale:-2"] {
            assert_eq!(s.parse::<Attack>().unwrap().to_string(), s.replace("scale:-2", "sign-flip:2"));
        }
        for s in ["scale", "flip:2", "sign-flip:x", "scale:inf", ""] {
            assert!(s.parse::<Attack>().is_err(), "{s}");
        }
        let layout = std::sync::Arc::new(crate::Layout::new(vec![crate::TensorSpec::new("w", vec![3])]).unwrap());
        let mut delta = Params::from_vec(layout, vec![1.0, -0.5, 0.0]).unwrap();
        "sign-flip:4".parse::<Attack>().unwrap().corrupt(&mut delta);
        assert_eq!(delta.as_slice(), &[-4.0, 2.0, 0.0]);
    }
}
