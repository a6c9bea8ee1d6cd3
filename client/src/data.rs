//! The data a browser trains on, which never leaves it: one partition of a public demo split,
//! or the user's own CSV file. Pure functions, tested natively.

use webfl_shared::data::csv::{CsvOptions, parse_csv};
use webfl_shared::data::partition::{Partition, partition};
use webfl_shared::data::{Dataset, mnist};
use webfl_shared::protocol::DatasetInfo;
use webfl_shared::rng;

use crate::ClientError;

/// Which part of the public training split this browser takes: client `client` of `of` under
/// `scheme` (`iid`, `shards:2`, `dirichlet:0.5`, …) for run seed `seed`. The partitioner's seed
/// is [`rng::partition_seed`], as in `webfl simulate` and `webfl partition`, so a page trains on
/// exactly the examples simulated client `client` would.
#[derive(Clone, Debug, PartialEq)]
pub struct DemoPartition {
    pub scheme: String,
    pub client: usize,
    pub of: usize,
    pub seed: u64,
}

/// Decodes the demo file (WFDS) and keeps this client's partition of its training split.
pub fn demo_partition(wfds: &[u8], which: &DemoPartition) -> Result<Dataset, ClientError> {
    let scheme: Partition = which.scheme.parse().map_err(|e| ClientError::Data(format!("{e}")))?;
    if which.client >= which.of {
        return Err(ClientError::Data(format!(
            "client {} of {}: the client index must be below the client count",
            which.client, which.of
        )));
    }
    let split = mnist::decode(wfds).map_err(|e| ClientError::Data(format!("the demo data is unreadable: {e}")))?;
    let train = split.train;
    let parts = partition(&train.labels, train.classes, which.of, &scheme, rng::partition_seed(which.seed))
        .map_err(|e| ClientError::Data(e.to_string()))?;
    Ok(train.subset(&parts[which.client]))
}

/// Parses the user's CSV (label column `label`, or the first column) and checks it fits the
/// task's model.
pub fn csv_dataset(text: &str, task: &DatasetInfo) -> Result<Dataset, ClientError> {
    let data = parse_csv(text, &CsvOptions::default()).map_err(|e| ClientError::Data(e.to_string()))?;
    check_fits(&data, task)?;
    Ok(data)
}

/// Refuses data the task's model cannot train on, naming what differs.
pub fn check_fits(data: &Dataset, task: &DatasetInfo) -> Result<(), ClientError> {
    let want: usize = task.sample_shape.iter().product();
    if data.sample_len() != want {
        return Err(ClientError::Data(format!(
            "each sample has {} features but the task's model takes {want} (shape {:?})",
            data.sample_len(),
            task.sample_shape
        )));
    }
    if data.classes > task.classes {
        return Err(ClientError::Data(format!(
            "the data has {} classes but the task's model predicts {}",
            data.classes, task.classes
        )));
    }
    if data.is_empty() {
        return Err(ClientError::Data("the data holds no samples".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use webfl_shared::data::Split;

    fn tiny_wfds() -> Vec<u8> {
        let pixels = |n: usize| (0..n * 784).map(|i| (i % 256) as f32 / 255.0).collect::<Vec<_>>();
        let ds = |n: usize| Dataset {
            sample_shape: vec![1, 28, 28],
            classes: 10,
            class_names: mnist::mnist_class_names(),
            features: pixels(n),
            labels: (0..n as u32).map(|i| i % 10).collect(),
        };
        mnist::encode(&Split { train: ds(40), test: ds(10) }).unwrap()
    }

    #[test]
    fn demo_partitions_are_disjoint_and_cover_the_training_split() {
        let bytes = tiny_wfds();
        let parts: Vec<Dataset> = (0..4)
            .map(|client| {
                let which = DemoPartition { scheme: "iid".into(), client, of: 4, seed: 0 };
                demo_partition(&bytes, &which).unwrap()
            })
            .collect();
        assert!(parts.iter().all(|p| p.len() == 10));
        let mut seen: Vec<Vec<u32>> = parts.iter().flat_map(|p| (0..p.len()).map(|i| sample_key(p, i))).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 40, "no sample is in two partitions");
    }

    fn sample_key(d: &Dataset, i: usize) -> Vec<u32> {
        d.sample(i).iter().map(|x| x.to_bits()).chain([d.labels[i]]).collect()
    }

    #[test]
    fn bad_partition_requests_name_the_problem() {
        let bytes = tiny_wfds();
        let bad = |scheme: &str, client, of| {
            demo_partition(&bytes, &DemoPartition { scheme: scheme.into(), client, of, seed: 0 })
                .err()
                .unwrap()
                .to_string()
        };
        assert!(bad("iid", 4, 4).contains("below the client count"));
        assert!(bad("zipf:2", 0, 4).contains("zipf"));
        assert!(
            demo_partition(b"nonsense", &DemoPartition { scheme: "iid".into(), client: 0, of: 1, seed: 0 }).is_err()
        );
    }

    #[test]
    fn csv_must_fit_the_model() {
        let task = DatasetInfo { name: "t".into(), sample_shape: vec![2], classes: 2, demo_data_url: None };
        let data = csv_dataset("label,a,b\n0,1,2\n1,3,4\n", &task).unwrap();
        assert_eq!(data.len(), 2);
        let err = csv_dataset("label,a\n0,1\n", &task).err().unwrap().to_string();
        assert!(err.contains("1 features") && err.contains("takes 2"), "{err}");
        let err = csv_dataset("label,a,b\n0,1,2\n1,3,4\n2,5,6\n", &task).err().unwrap().to_string();
        assert!(err.contains("3 classes"), "{err}");
    }
}
