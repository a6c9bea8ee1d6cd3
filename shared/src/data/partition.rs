//! Splitting a dataset among simulated clients: IID and the usual non-IID schemes.
//!
//! A partitioner looks only at the labels and returns, for each client, the indices of its
//! samples (ascending). No sample goes to two clients. Everything is seeded: the same labels,
//! client count, scheme and seed give the same partition.

use std::fmt;
use std::str::FromStr;

use rand::Rng as _;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, Gamma, StandardNormal};

use crate::rng::Rng;

/// How to spread samples over clients; written as `iid`, `shards:K`, `dirichlet:ALPHA` or
/// `quantity:SIGMA` (in task files, on the command line and in serde).
#[derive(Clone, Debug, PartialEq)]
pub enum Partition {
    /// Shuffle, then split as evenly as possible: every client sees the global label mix.
    Iid,
    /// Pathological label skew of McMahan et al. (2017): sort by label, cut into
    /// `clients × per_client` shards of (nearly) equal size, deal each client `per_client`
    /// random shards. With `per_client = 2` most clients hold just two labels.
    Shards { per_client: usize },
    /// Label skew after Hsu, Qi & Brown (2019), "Measuring the effects of non-identical data
    /// distribution", in its *per-client* form: with `p` the global class proportions, each
    /// client draws its own class mix `q ~ Dir(alpha · p)` and receives `n / clients` samples
    /// (equal quantity, the remainder spread one each over the first clients), drawn one at a
    /// time from class `c` with probability `q_c`, without replacement. When a class runs out,
    /// `q` is renormalised over the classes that remain (or, if `q` puts no weight on any of
    /// them, the draw follows the remaining class counts), so every sample is used.
    /// Small `alpha` (0.1) gives nearly single-class clients, large `alpha` (100) nearly IID.
    ///
    /// This differs from the per-*class* convention of Yurochkin et al. (2019) used by FedLab
    /// and many repositories, where each class draws a split over clients `~ Dir(alpha · 1)`:
    /// there client sizes vary too (label and quantity skew mixed), whereas here sizes are equal
    /// and only the label mix varies; the same `alpha` is therefore not comparable across the
    /// two conventions.
    Dirichlet { alpha: f64 },
    /// Quantity skew: client sizes proportional to `LogNormal(0, sigma)` draws (at least one
    /// sample each), labels IID. `sigma = 0` gives equal sizes.
    Quantity { sigma: f64 },
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PartitionError {
    #[error("invalid partition {input:?}: {reason}")]
    Parse { input: String, reason: String },
    #[error("invalid partition {0}")]
    InvalidParameter(String),
    #[error("there must be at least one client")]
    NoClients,
    #[error("{clients} clients but only {samples} samples: every client needs at least one")]
    TooManyClients { clients: usize, samples: usize },
    #[error(
        "shards:{per_client} with {clients} clients needs {shards} shards of at least one sample, \
         but there are only {samples} samples; use fewer clients or fewer shards per client"
    )]
    TooFewSamplesForShards { per_client: usize, clients: usize, shards: usize, samples: usize },
    #[error("sample {index} has label {label}, but there are only {classes} classes")]
    LabelOutOfRange { index: usize, label: u32, classes: usize },
}

const SYNTAX: &str = "expected iid, shards:K, dirichlet:ALPHA or quantity:SIGMA";

impl FromStr for Partition {
    type Err = PartitionError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| PartitionError::Parse { input: input.to_string(), reason };
        let s = input.trim();
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k.trim().to_ascii_lowercase(), Some(a.trim())),
            None => (s.to_ascii_lowercase(), None),
        };
        let how = match (kind.as_str(), arg) {
            ("iid", None) => Partition::Iid,
            ("iid", Some(_)) => return Err(fail("iid takes no parameter".into())),
            ("shards", Some(a)) => Partition::Shards {
                per_client: a
                    .parse()
                    .map_err(|_| fail(format!("shards per client must be a whole number, got {a:?}")))?,
            },
            ("dirichlet", Some(a)) => Partition::Dirichlet {
                alpha: a.parse().map_err(|_| fail(format!("alpha must be a number, got {a:?}")))?,
            },
            ("quantity", Some(a)) => Partition::Quantity {
                sigma: a.parse().map_err(|_| fail(format!("sigma must be a number, got {a:?}")))?,
            },
            ("shards" | "dirichlet" | "quantity", None) => {
                return Err(fail(format!("{kind} needs a parameter; {SYNTAX}")));
            }
            _ => return Err(fail(format!("unknown scheme; {SYNTAX}"))),
        };
        how.validate().map_err(|reason| fail(reason.to_string()))?;
        Ok(how)
    }
}

impl Partition {
    fn validate(&self) -> Result<(), &'static str> {
        match *self {
            Partition::Iid => Ok(()),
            Partition::Shards { per_client: 0 } => Err("shards per client must be at least 1"),
            Partition::Dirichlet { alpha } if !(alpha.is_finite() && alpha > 0.0) => {
                Err("alpha must be a finite number > 0")
            }
            Partition::Quantity { sigma } if !(sigma.is_finite() && sigma >= 0.0) => {
                Err("sigma must be a finite number ≥ 0")
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Partition {
    /// The same string [`FromStr`] reads (f64 `Display` is shortest round-trip, so it is exact).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partition::Iid => write!(f, "iid"),
            Partition::Shards { per_client } => write!(f, "shards:{per_client}"),
            Partition::Dirichlet { alpha } => write!(f, "dirichlet:{alpha}"),
            Partition::Quantity { sigma } => write!(f, "quantity:{sigma}"),
        }
    }
}

impl serde::Serialize for Partition {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Partition {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Stream tag so a partition and a train/test split drawn from the same seed are independent.
const PARTITION_STREAM: u64 = u64::from_le_bytes(*b"partitn\0");

/// Splits samples with these `labels` (each `< classes`) among `clients` clients; see
/// [`Partition`] for the schemes. Returns each client's sample indices in ascending order.
pub fn partition(
    labels: &[u32],
    classes: usize,
    clients: usize,
    how: &Partition,
    seed: u64,
) -> Result<Vec<Vec<usize>>, PartitionError> {
    how.validate().map_err(|reason| PartitionError::InvalidParameter(format!("{how}: {reason}")))?;
    let n = labels.len();
    if clients == 0 {
        return Err(PartitionError::NoClients);
    }
    if clients > n {
        return Err(PartitionError::TooManyClients { clients, samples: n });
    }
    if let Some(index) = labels.iter().position(|&l| l as usize >= classes) {
        return Err(PartitionError::LabelOutOfRange { index, label: labels[index], classes });
    }
    let mut rng = crate::rng::derive(seed, &[PARTITION_STREAM]);
    let mut parts = match *how {
        Partition::Iid => {
            let sizes = even_sizes(n, clients);
            chunks(&shuffled(n, &mut rng), &sizes)
        }
        Partition::Shards { per_client } => shards(labels, clients, per_client, &mut rng)?,
        Partition::Dirichlet { alpha } => dirichlet(labels, classes, clients, alpha, &mut rng),
        Partition::Quantity { sigma } => {
            let sizes = lognormal_sizes(n, clients, sigma, &mut rng);
            chunks(&shuffled(n, &mut rng), &sizes)
        }
    };
    for part in &mut parts {
        part.sort_unstable();
    }
    Ok(parts)
}

fn shuffled(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    order
}

/// `n` split into `k` sizes differing by at most one, larger ones first.
fn even_sizes(n: usize, k: usize) -> Vec<usize> {
    (0..k).map(|i| n / k + usize::from(i < n % k)).collect()
}

/// Consecutive runs of `order` with the given sizes.
fn chunks(order: &[usize], sizes: &[usize]) -> Vec<Vec<usize>> {
    let mut start = 0;
    sizes
        .iter()
        .map(|&s| {
            let part = order[start..start + s].to_vec();
            start += s;
            part
        })
        .collect()
}

fn shards(labels: &[u32], clients: usize, per_client: usize, rng: &mut Rng) -> Result<Vec<Vec<usize>>, PartitionError> {
    let n = labels.len();
    let too_few = || PartitionError::TooFewSamplesForShards {
        per_client,
        clients,
        shards: clients.saturating_mul(per_client),
        samples: n,
    };
    let count = clients.checked_mul(per_client).ok_or_else(too_few)?;
    if count > n {
        return Err(too_few());
    }
    // Shuffle first so the stable sort leaves each label's samples in random order.
    let mut order = shuffled(n, rng);
    order.sort_by_key(|&i| labels[i]);
    let bounds: Vec<usize> = (0..=count).map(|j| j * n / count).collect();
    let deal = shuffled(count, rng);
    Ok(deal
        .chunks(per_client)
        .map(|shard_ids| shard_ids.iter().flat_map(|&j| order[bounds[j]..bounds[j + 1]].iter().copied()).collect())
        .collect())
}

fn dirichlet(labels: &[u32], classes: usize, clients: usize, alpha: f64, rng: &mut Rng) -> Vec<Vec<usize>> {
    let n = labels.len();
    // Per-class pools in random order; drawing pops from the end.
    let mut pools: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for i in shuffled(n, rng) {
        pools[labels[i] as usize].push(i);
    }
    let prior: Vec<f64> = pools.iter().map(|p| p.len() as f64 / n as f64).collect();
    let concentration: Vec<f64> = prior.iter().map(|p| alpha * p).collect();
    let mut weights = vec![0.0; classes];
    even_sizes(n, clients)
        .into_iter()
        .map(|size| {
            let q = sample_dirichlet(&concentration, &prior, rng);
            let mut part = Vec::with_capacity(size);
            for _ in 0..size {
                for (c, w) in weights.iter_mut().enumerate() {
                    *w = if pools[c].is_empty() { 0.0 } else { q[c] };
                }
                if weights.iter().sum::<f64>() <= 0.0 {
                    // q has no mass left on the remaining classes: take any remaining sample.
                    for (w, pool) in weights.iter_mut().zip(&pools) {
                        *w = pool.len() as f64;
                    }
                }
                let c = pick(&weights, rng);
                // `pick` only returns classes with weight > 0, i.e. with samples left.
                if let Some(i) = pools[c].pop() {
                    part.push(i);
                }
            }
            part
        })
        .collect()
}

/// A draw from `Dir(concentration)` (classes with concentration 0 get 0). Computed in log space
/// because for small concentrations the plain Gamma draws underflow to exactly 0: for `a < 1`,
/// `Gamma(a) = Gamma(a + 1) · U^(1/a)` (Marsaglia & Tsang), whose logarithm stays finite.
fn sample_dirichlet(concentration: &[f64], prior: &[f64], rng: &mut Rng) -> Vec<f64> {
    let logs: Vec<f64> = concentration
        .iter()
        .map(|&a| {
            if a.is_nan() || a <= 0.0 {
                return f64::NEG_INFINITY;
            }
            let shape = if a < 1.0 { a + 1.0 } else { a };
            let g: f64 = Gamma::new(shape, 1.0).map_or(0.0, |d| d.sample(rng));
            let u = 1.0 - rng.random::<f64>(); // in (0, 1]
            if a < 1.0 { g.ln() + u.ln() / a } else { g.ln() }
        })
        .collect();
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        // Every term underflowed even in log space: that is the alpha → 0 limit, a one-hot
        // mix on a class drawn with probability `prior`.
        let mut q = vec![0.0; prior.len()];
        q[pick(prior, rng)] = 1.0;
        return q;
    }
    let mut q: Vec<f64> = logs.iter().map(|&l| (l - max).exp()).collect();
    let total: f64 = q.iter().sum();
    q.iter_mut().for_each(|x| *x /= total);
    q
}

/// An index drawn with probability proportional to `weights` (at least one must be > 0); only
/// indices with positive weight are ever returned.
fn pick(weights: &[f64], rng: &mut Rng) -> usize {
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    let mut last = 0;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            if u < w {
                return i;
            }
            u -= w;
            last = i;
        }
    }
    last // rounding left `u` just past the end
}

/// Client sizes ∝ LogNormal(0, sigma) draws, each at least 1, summing to `n` (≥ `clients`).
fn lognormal_sizes(n: usize, clients: usize, sigma: f64, rng: &mut Rng) -> Vec<usize> {
    // Log space again, so large sigma cannot overflow exp().
    let logs: Vec<f64> = (0..clients)
        .map(|_| {
            let z: f64 = StandardNormal.sample(rng);
            sigma * z
        })
        .collect();
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logs.iter().map(|&l| (l - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    // Everyone gets 1; the rest is shared by largest remainders.
    let extra = n - clients;
    let shares: Vec<f64> = weights.iter().map(|w| w / total * extra as f64).collect();
    let mut sizes: Vec<usize> = shares.iter().map(|s| 1 + s.floor() as usize).collect();
    let assigned: usize = sizes.iter().sum::<usize>() - clients;
    let mut by_remainder: Vec<usize> = (0..clients).collect();
    by_remainder.sort_by(|&a, &b| {
        let (ra, rb) = (shares[a] - shares[a].floor(), shares[b] - shares[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &i in by_remainder.iter().cycle().take(extra.saturating_sub(assigned)) {
        sizes[i] += 1;
    }
    sizes
}

/// A printable table: one row per client with its size and per-class counts, then a total row.
/// Indices or labels out of range are skipped rather than trusted.
pub fn histogram_table(labels: &[u32], classes: usize, parts: &[Vec<usize>]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::with_capacity(parts.len() + 2);
    let header = ["client".to_string(), "size".to_string()];
    rows.push(header.into_iter().chain((0..classes).map(|c| c.to_string())).collect());
    let mut totals = vec![0usize; classes];
    for (client, part) in parts.iter().enumerate() {
        let mut counts = vec![0usize; classes];
        for &i in part {
            if let Some(c) = labels.get(i).and_then(|&l| counts.get_mut(l as usize)) {
                *c += 1;
            }
        }
        totals.iter_mut().zip(&counts).for_each(|(t, c)| *t += c);
        let cells = [client.to_string(), part.len().to_string()];
        rows.push(cells.into_iter().chain(counts.iter().map(usize::to_string)).collect());
    }
    let size: usize = parts.iter().map(Vec::len).sum();
    let cells = ["total".to_string(), size.to_string()];
    rows.push(cells.into_iter().chain(totals.iter().map(usize::to_string)).collect());

    let widths: Vec<usize> = (0..classes + 2).map(|col| rows.iter().map(|r| r[col].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(col, (cell, &w))| if col == 0 { format!("{cell:<w$}") } else { format!("{cell:>w$}") })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MNIST-like balanced labels: `per_class` samples of each of 10 classes, interleaved.
    fn balanced(per_class: usize) -> Vec<u32> {
        (0..per_class * 10).map(|i| (i % 10) as u32).collect()
    }

    fn schemes() -> Vec<Partition> {
        ["iid", "shards:2", "dirichlet:0.1", "dirichlet:1", "quantity:1"].iter().map(|s| s.parse().unwrap()).collect()
    }

    fn assert_disjoint_and_complete(parts: &[Vec<usize>], n: usize) {
        let mut seen = vec![false; n];
        for part in parts {
            assert!(part.windows(2).all(|w| w[0] < w[1]), "ascending, no repeats");
            for &i in part {
                assert!(!seen[i], "sample {i} given twice");
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|&s| s), "every sample is used");
    }

    /// Mean over clients of the share of its largest class: 0.1 for perfectly IID 10-class
    /// clients, 1 for single-class ones.
    fn mean_max_class_fraction(labels: &[u32], parts: &[Vec<usize>]) -> f64 {
        let fractions = parts.iter().map(|part| {
            let mut h = [0usize; 10];
            part.iter().for_each(|&i| h[labels[i] as usize] += 1);
            *h.iter().max().unwrap() as f64 / part.len() as f64
        });
        fractions.sum::<f64>() / parts.len() as f64
    }

    #[test]
    fn every_scheme_is_disjoint_complete_and_seeded() {
        let labels = balanced(100);
        for how in schemes() {
            let parts = partition(&labels, 10, 20, &how, 7).unwrap();
            assert_eq!(parts.len(), 20, "{how}");
            assert!(parts.iter().all(|p| !p.is_empty()), "{how}");
            assert_disjoint_and_complete(&parts, labels.len());
            assert_eq!(parts, partition(&labels, 10, 20, &how, 7).unwrap(), "{how}");
            assert_ne!(parts, partition(&labels, 10, 20, &how, 8).unwrap(), "{how}");
        }
    }

    #[test]
    fn iid_sizes_differ_by_at_most_one() {
        let parts = partition(&balanced(10), 10, 7, &Partition::Iid, 1).unwrap();
        let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![15, 15, 14, 14, 14, 14, 14]);
    }

    #[test]
    fn two_shards_give_at_most_two_labels() {
        // 10 × 1000 samples, 100 clients × 2 shards of 50: shards never straddle labels.
        let labels = balanced(1000);
        let how = Partition::Shards { per_client: 2 };
        let parts = partition(&labels, 10, 100, &how, 3).unwrap();
        assert_disjoint_and_complete(&parts, labels.len());
        for part in &parts {
            assert_eq!(part.len(), 100);
            let mut distinct: Vec<u32> = part.iter().map(|&i| labels[i]).collect();
            distinct.sort_unstable();
            distinct.dedup();
            assert!(distinct.len() <= 2, "{distinct:?}");
        }
    }

    #[test]
    fn dirichlet_alpha_controls_skew() {
        let labels = balanced(600);
        let skew = |alpha: f64| {
            let mut total = 0.0;
            for seed in 0..3 {
                let parts = partition(&labels, 10, 30, &Partition::Dirichlet { alpha }, seed);
                let parts = parts.unwrap();
                assert!(parts.iter().all(|p| p.len() == 200));
                total += mean_max_class_fraction(&labels, &parts);
            }
            total / 3.0
        };
        let (tiny, one, huge) = (skew(0.01), skew(1.0), skew(1e4));
        assert!(tiny > 0.6, "alpha 0.01: {tiny}");
        assert!(huge < 0.2, "alpha 1e4: {huge}");
        assert!(tiny > one && one > huge, "{tiny} {one} {huge}");
    }

    #[test]
    fn dirichlet_uses_the_label_prior() {
        // Class 1 is rare globally; with large alpha every client mirrors that.
        let labels: Vec<u32> = (0..1000).map(|i| u32::from(i % 10 == 0)).collect();
        let parts = partition(&labels, 3, 5, &Partition::Dirichlet { alpha: 1e4 }, 1).unwrap();
        for part in &parts {
            let ones = part.iter().filter(|&&i| labels[i] == 1).count();
            assert!((10..=30).contains(&ones), "{ones}");
        }
    }

    #[test]
    fn quantity_sizes_vary_with_sigma() {
        let labels = balanced(100);
        let spread = |sigma: f64| {
            let parts = partition(&labels, 10, 20, &Partition::Quantity { sigma }, 2).unwrap();
            let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
            assert_eq!(sizes.iter().sum::<usize>(), 1000);
            assert!(sizes.iter().all(|&s| s >= 1));
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap()
        };
        assert_eq!(spread(0.0), 0);
        let (low, high) = (spread(0.3), spread(2.0));
        assert!(low > 0 && high > 3 * low, "{low} {high}");
        // Extreme sigma: a few clients take nearly everything, the rest still get one each.
        assert!(spread(50.0) > 500);
    }

    #[test]
    fn parse_and_display_round_trip() {
        for s in ["iid", "shards:2", "dirichlet:0.5", "dirichlet:100", "quantity:0", "quantity:1.25"] {
            let how: Partition = s.parse().unwrap();
            assert_eq!(how.to_string(), s);
            let json = serde_json::to_string(&how).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Partition>(&json).unwrap(), how);
        }
        assert_eq!(" Dirichlet: 0.3 ".parse::<Partition>().unwrap(), Partition::Dirichlet { alpha: 0.3 });
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let err = |s: &str| s.parse::<Partition>().unwrap_err().to_string();
        assert_eq!(
            err("noniid"),
            r#"invalid partition "noniid": unknown scheme; expected iid, shards:K, dirichlet:ALPHA or quantity:SIGMA"#
        );
        assert!(err("shards").contains("shards needs a parameter"));
        assert!(err("shards:1.5").contains("whole number, got \"1.5\""));
        assert!(err("shards:0").contains("at least 1"));
        assert!(err("dirichlet:0").contains("alpha must be a finite number > 0"));
        assert!(err("dirichlet:inf").contains("alpha must be a finite number > 0"));
        assert!(err("dirichlet:x").contains("alpha must be a number"));
        assert!(err("quantity:-1").contains("sigma must be"));
        assert!(err("iid:3").contains("no parameter"));
        assert!(serde_json::from_str::<Partition>("\"dirichlet:-2\"").is_err());
    }

    #[test]
    fn partition_rejects_bad_requests() {
        let labels = balanced(2);
        let p = |clients: usize, how: Partition| partition(&labels, 10, clients, &how, 0);
        assert_eq!(p(0, Partition::Iid), Err(PartitionError::NoClients));
        assert_eq!(p(21, Partition::Iid), Err(PartitionError::TooManyClients { clients: 21, samples: 20 }));
        let err = p(8, Partition::Shards { per_client: 3 }).unwrap_err();
        assert_eq!(
            err.to_string(),
            "shards:3 with 8 clients needs 24 shards of at least one sample, but there are only \
             20 samples; use fewer clients or fewer shards per client"
        );
        assert!(p(5, Partition::Shards { per_client: usize::MAX }).is_err());
        assert!(matches!(p(2, Partition::Dirichlet { alpha: f64::NAN }), Err(PartitionError::InvalidParameter(_))));
        assert_eq!(
            partition(&[0, 1, 5], 3, 1, &Partition::Iid, 0),
            Err(PartitionError::LabelOutOfRange { index: 2, label: 5, classes: 3 })
        );
    }

    #[test]
    fn uneven_shards_still_cover_everything() {
        let labels: Vec<u32> = (0..103).map(|i| (i * 7 % 5) as u32).collect();
        let parts = partition(&labels, 5, 7, &Partition::Shards { per_client: 3 }, 4).unwrap();
        assert_disjoint_and_complete(&parts, 103);
        assert!(parts.iter().all(|p| (14..=15).contains(&p.len())));
    }

    #[test]
    fn histogram_table_lists_clients_and_totals() {
        let labels = [0, 1, 1, 2, 2, 2];
        let table = histogram_table(&labels, 3, &[vec![0, 1], vec![2, 3, 4, 5]]);
        assert_eq!(
            table,
            "client  size  0  1  2\n\
             0          2  1  1  0\n\
             1          4  0  1  3\n\
             total      6  1  2  3\n"
        );
    }
}
