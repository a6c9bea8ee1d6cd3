//! Tabular classification data from CSV text: one sample per row, one label column, every other
//! column a numeric feature.
//!
//! Labels may be integers or any strings; the distinct values become classes `0..k` in sorted
//! order (numeric order when every label is an integer), and the values themselves become the
//! class names. Errors name the 1-based line and the column (by header name, or 1-based number
//! when there is no header), e.g. `line 17, column "x3": "abc" is not a number`.

use rand::seq::SliceRandom;

use super::{Dataset, Split};

/// Which column holds the label.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LabelColumn {
    /// The header column named `label` (ASCII case-insensitive) if there is one, else column 0.
    #[default]
    Auto,
    /// The header column with this name (exact match first, then ASCII case-insensitive).
    Name(String),
    /// The column at this 0-based index.
    Index(usize),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CsvOptions {
    pub label_column: LabelColumn,
    /// `None` auto-detects: the first row is a header if it names the label column, or if any
    /// field in it other than the label is not a number.
    pub has_header: Option<bool>,
    /// Z-score every feature with the mean and standard deviation of the parsed data. Those are
    /// training statistics only if the text is the training set: to split one file, use
    /// [`parse_csv_split`], which fits them on the train part alone.
    pub standardize: bool,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CsvError {
    #[error("the CSV has no data rows")]
    Empty,
    #[error("no feature columns: the rows have only the label column")]
    NoFeatures,
    #[error("line {line}: {found} fields, but the first row has {expected}")]
    Ragged { line: u64, expected: usize, found: usize },
    #[error("line {line}, column {column}: {value:?} is not a number")]
    NotANumber { line: u64, column: String, value: String },
    #[error("line {line}, column {column}: {value:?} is not a finite 32-bit number")]
    NotFinite { line: u64, column: String, value: String },
    #[error("line {line}, column {column}: empty value (missing values are not supported)")]
    EmptyValue { line: u64, column: String },
    #[error("line {line}, label column {column}: empty label")]
    EmptyLabel { line: u64, column: String },
    #[error("label column {name:?} not found; the header has {columns:?}")]
    LabelColumnNotFound { name: String, columns: Vec<String> },
    #[error("label column index {index} is out of range: rows have {columns} columns (0-based)")]
    LabelIndexOutOfRange { index: usize, columns: usize },
    #[error("the label column is given by name ({0:?}), but has_header is false")]
    NameWithoutHeader(String),
    #[error("line {line}: {message}")]
    Syntax { line: u64, message: String },
}

/// Parses CSV text into a dataset with `sample_shape = [n_features]`; features keep the order
/// of their columns. See [`CsvOptions`] for the label column, header detection and scaling.
pub fn parse_csv(text: &str, opts: &CsvOptions) -> Result<Dataset, CsvError> {
    let mut ds = parse_unscaled(text, opts)?;
    if opts.standardize {
        Standardizer::fit(&ds).apply(&mut ds);
    }
    Ok(ds)
}

/// Parses one CSV file and splits it with [`train_test_split`]; with `opts.standardize` the
/// z-scoring statistics come from the train part only, so nothing about the test set leaks in.
pub fn parse_csv_split(text: &str, opts: &CsvOptions, test_fraction: f64, seed: u64) -> Result<Split, CsvError> {
    let ds = parse_unscaled(text, opts)?;
    let mut split = train_test_split(&ds, test_fraction, seed);
    if opts.standardize {
        let s = Standardizer::fit(&split.train);
        s.apply(&mut split.train);
        s.apply(&mut split.test);
    }
    Ok(split)
}

fn parse_unscaled(text: &str, opts: &CsvOptions) -> Result<Dataset, CsvError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text); // spreadsheet exports add a BOM
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(false) // header detection is ours
        .flexible(true) // so ragged rows get our error, with the line number
        .trim(::csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut lines = LineCounter::new(text);
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| CsvError::Syntax {
            line: e.position().map_or(0, |p| lines.record_line(p.byte())),
            message: e.to_string(),
        })?;
        let line = record.position().map_or(0, |p| lines.record_line(p.byte()));
        rows.push((line, record));
    }
    let Some((_, first)) = rows.first() else {
        return Err(CsvError::Empty);
    };
    let first: Vec<String> = first.iter().map(str::to_string).collect();
    let columns = first.len();

    let named_label = |first: &[String]| first.iter().position(|f| f.eq_ignore_ascii_case("label"));
    let non_numeric_except = |skip: usize| first.iter().enumerate().any(|(i, f)| i != skip && !is_number(f));
    let has_header = match (opts.has_header, &opts.label_column) {
        (Some(h), _) => h,
        (None, LabelColumn::Name(_)) => true,
        (None, LabelColumn::Auto) => named_label(&first).is_some() || non_numeric_except(0),
        (None, LabelColumn::Index(i)) => non_numeric_except(*i),
    };
    let label = match &opts.label_column {
        LabelColumn::Auto => {
            if has_header {
                named_label(&first).unwrap_or(0)
            } else {
                0
            }
        }
        LabelColumn::Index(index) => {
            if *index >= columns {
                return Err(CsvError::LabelIndexOutOfRange { index: *index, columns });
            }
            *index
        }
        LabelColumn::Name(name) => {
            if !has_header {
                return Err(CsvError::NameWithoutHeader(name.clone()));
            }
            first
                .iter()
                .position(|f| f == name)
                .or_else(|| first.iter().position(|f| f.eq_ignore_ascii_case(name)))
                .ok_or_else(|| CsvError::LabelColumnNotFound { name: name.clone(), columns: first.clone() })?
        }
    };
    if columns < 2 {
        return Err(CsvError::NoFeatures);
    }
    let header = has_header.then_some(first.as_slice());
    let column_name = |i: usize| match header {
        Some(h) => format!("{:?}", h[i]),
        None => (i + 1).to_string(),
    };

    let data = &rows[usize::from(has_header)..];
    if data.is_empty() {
        return Err(CsvError::Empty);
    }
    let n_features = columns - 1;
    let mut features = Vec::with_capacity(data.len() * n_features);
    let mut raw_labels = Vec::with_capacity(data.len());
    for (line, record) in data {
        let line = *line;
        if record.len() != columns {
            return Err(CsvError::Ragged { line, expected: columns, found: record.len() });
        }
        for (i, field) in record.iter().enumerate() {
            if i == label {
                if field.is_empty() {
                    return Err(CsvError::EmptyLabel { line, column: column_name(i) });
                }
                raw_labels.push(field);
                continue;
            }
            let column = || column_name(i);
            if field.is_empty() {
                return Err(CsvError::EmptyValue { line, column: column() });
            }
            let value: f32 =
                field.parse().map_err(|_| CsvError::NotANumber { line, column: column(), value: field.to_string() })?;
            if !value.is_finite() {
                return Err(CsvError::NotFinite { line, column: column(), value: field.to_string() });
            }
            features.push(value);
        }
    }
    let (class_names, labels) = index_labels(&raw_labels);
    Ok(Dataset { sample_shape: vec![n_features], classes: class_names.len(), class_names, features, labels })
}

/// 1-based line numbers of records. The csv crate's own `Position::line` miscounts around blank
/// lines and CRLF, and its byte offset points at the blank lines skipped before a record, so we
/// count line breaks up to that offset, then skip the breaks that follow.
struct LineCounter<'a> {
    text: &'a [u8],
    pos: usize,
    line: u64,
}

impl<'a> LineCounter<'a> {
    fn new(text: &'a str) -> Self {
        LineCounter { text: text.as_bytes(), pos: 0, line: 1 }
    }

    /// Whether a line break (`\n`, `\r\n` or a lone `\r`) ends at byte `i`.
    fn break_at(&self, i: usize) -> bool {
        match self.text[i] {
            b'\n' => true,
            b'\r' => self.text.get(i + 1) != Some(&b'\n'),
            _ => false,
        }
    }

    /// Line of the record the csv reader reports at byte offset `start` (offsets only grow).
    fn record_line(&mut self, start: u64) -> u64 {
        let start = usize::try_from(start).map_or(self.text.len(), |s| s.min(self.text.len()));
        while self.pos < start {
            self.line += u64::from(self.break_at(self.pos));
            self.pos += 1;
        }
        while self.pos < self.text.len() && matches!(self.text[self.pos], b'\r' | b'\n') {
            self.line += u64::from(self.break_at(self.pos));
            self.pos += 1;
        }
        self.line
    }
}

fn is_number(field: &str) -> bool {
    field.parse::<f64>().is_ok_and(f64::is_finite)
}

/// Maps label values to class indices in sorted order: numeric if every value is an integer
/// (so "10" comes after "9"), else by string.
fn index_labels(raw: &[&str]) -> (Vec<String>, Vec<u32>) {
    let ints: Option<Vec<i64>> = raw.iter().map(|s| s.parse().ok()).collect();
    match ints {
        Some(ints) => {
            let mut classes = ints.clone();
            classes.sort_unstable();
            classes.dedup();
            let labels = ints.iter().map(|v| classes.binary_search(v).map_or(0, |i| i as u32)).collect();
            (classes.iter().map(i64::to_string).collect(), labels)
        }
        None => {
            let mut classes: Vec<&str> = raw.to_vec();
            classes.sort_unstable();
            classes.dedup();
            let labels = raw.iter().map(|v| classes.binary_search(v).map_or(0, |i| i as u32)).collect();
            (classes.iter().map(|s| s.to_string()).collect(), labels)
        }
    }
}

/// Per-feature z-scoring, `(x - mean) / std`. Keep it to transform later data the same way.
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    pub mean: Vec<f32>,
    /// Population standard deviation; 1 for constant features, which are then only centred.
    pub std: Vec<f32>,
}

impl Standardizer {
    /// Statistics of `ds`, treating each sample as a flat vector of `sample_len` features.
    pub fn fit(ds: &Dataset) -> Standardizer {
        let d = ds.sample_len();
        let n = ds.len();
        // f64 accumulation: f32 sums over many rows lose the digits that matter.
        let mut mean = vec![0f64; d];
        for i in 0..n {
            for (m, &x) in mean.iter_mut().zip(ds.sample(i)) {
                *m += x as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
        let mut var = vec![0f64; d];
        for i in 0..n {
            for ((v, &m), &x) in var.iter_mut().zip(&mean).zip(ds.sample(i)) {
                *v += (x as f64 - m).powi(2);
            }
        }
        let std = var
            .iter()
            .map(|v| {
                let s = (v / n.max(1) as f64).sqrt() as f32;
                if s > f32::EPSILON * 16.0 { s } else { 1.0 }
            })
            .collect();
        Standardizer { mean: mean.iter().map(|&m| m as f32).collect(), std }
    }

    /// Z-scores `ds` in place. Computed in f64 and saturated to the finite f32 range, so finite
    /// features stay finite: in f32, `x − mean` overflows for values near ±3.4e38, and a test
    /// value far outside the training spread can give a z-score beyond f32.
    pub fn apply(&self, ds: &mut Dataset) {
        let d = self.mean.len();
        if d == 0 {
            return;
        }
        let max = f64::from(f32::MAX);
        for (k, x) in ds.features.iter_mut().enumerate() {
            let z = (f64::from(*x) - f64::from(self.mean[k % d])) / f64::from(self.std[k % d]);
            *x = z.clamp(-max, max) as f32;
        }
    }
}

/// Stream tag so a split and a partition drawn from the same seed are independent.
const SPLIT_STREAM: u64 = u64::from_le_bytes(*b"ttsplit\0");

/// Shuffles `ds` with `seed` and puts `round(len × test_fraction)` samples in test, the rest in
/// train (each part in shuffled order). `test_fraction` is clamped to `[0, 1]` (NaN counts as 0).
pub fn train_test_split(ds: &Dataset, test_fraction: f64, seed: u64) -> Split {
    let fraction = if test_fraction.is_nan() { 0.0 } else { test_fraction.clamp(0.0, 1.0) };
    let n_test = ((ds.len() as f64) * fraction).round() as usize;
    let mut order: Vec<usize> = (0..ds.len()).collect();
    order.shuffle(&mut crate::rng::derive(seed, &[SPLIT_STREAM]));
    let (test, train) = order.split_at(n_test.min(ds.len()));
    Split { train: ds.subset(train), test: ds.subset(test) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Dataset, CsvError> {
        parse_csv(text, &CsvOptions::default())
    }

    fn with_label(label_column: LabelColumn) -> CsvOptions {
        CsvOptions { label_column, ..CsvOptions::default() }
    }

    #[test]
    fn header_with_label_column_anywhere() {
        let ds = parse("x1,label,x2\n1,cat,2\n3,dog,4.5\n-1e-3,cat,0\n").unwrap();
        assert_eq!(ds.sample_shape, vec![2]);
        assert_eq!(ds.features, vec![1.0, 2.0, 3.0, 4.5, -0.001, 0.0]);
        assert_eq!(ds.class_names, vec!["cat", "dog"]);
        assert_eq!(ds.labels, vec![0, 1, 0]);
        assert_eq!(ds.classes, 2);
    }

    #[test]
    fn headerless_numeric_labels_sort_numerically() {
        // No header: column 0 is the label; 10 sorts after 9, and -1 first.
        let ds = parse("9, 0.5\n10,1\n-1,2\n9,3\n").unwrap();
        assert_eq!(ds.class_names, vec!["-1", "9", "10"]);
        assert_eq!(ds.labels, vec![1, 2, 0, 1]);
        assert_eq!(ds.features, vec![0.5, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn header_is_detected_without_a_label_name() {
        let ds = parse("y,a,b\n1,2,3\n0,4,5\n").unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.labels, vec![1, 0]);
        // Forcing has_header=false makes the header row data, which then fails loudly.
        let opts = CsvOptions { has_header: Some(false), ..CsvOptions::default() };
        let err = parse_csv("y,a,b\n1,2,3\n", &opts).unwrap_err();
        assert_eq!(err.to_string(), r#"line 1, column 2: "a" is not a number"#);
    }

    #[test]
    fn label_by_index_and_name() {
        let iris = "5.1,3.5,setosa\n6.2,2.9,versicolor\n";
        let ds = parse_csv(iris, &with_label(LabelColumn::Index(2))).unwrap();
        assert_eq!(ds.class_names, vec!["setosa", "versicolor"]);
        assert_eq!(ds.features, vec![5.1, 3.5, 6.2, 2.9]);

        let text = "a,Species,b\n1,x,2\n";
        let ds = parse_csv(text, &with_label(LabelColumn::Name("species".into()))).unwrap();
        assert_eq!(ds.class_names, vec!["x"]);
        assert_eq!(ds.features, vec![1.0, 2.0]);
    }

    #[test]
    fn line_numbers_count_blank_lines_crlf_and_quoted_newlines() {
        let err = parse("label,x\r\n1,2\r\n\r\n\r\n0,x\r\n").unwrap_err();
        assert!(matches!(err, CsvError::NotANumber { line: 5, .. }), "{err}");
        let err = parse("\n\nlabel,x\n\"a\nb\",2\n\nc,?\n").unwrap_err();
        assert!(matches!(err, CsvError::NotANumber { line: 7, .. }), "{err}");
        let err = parse("label,x\r1,2\r\r0,x\r").unwrap_err();
        assert!(matches!(err, CsvError::NotANumber { line: 4, .. }), "{err}");
    }

    #[test]
    fn bom_crlf_and_blank_lines_are_tolerated() {
        let ds = parse("\u{feff}label,x\r\n1,2\r\n\r\n0,3\r\n").unwrap();
        assert_eq!(ds.labels, vec![1, 0]);
        assert_eq!(ds.features, vec![2.0, 3.0]);
    }

    #[test]
    fn bad_numbers_name_line_and_column() {
        let text = "label,x1,x2,x3\n0,1,2,3\n1,4,5,abc\n";
        assert_eq!(parse(text).unwrap_err().to_string(), r#"line 3, column "x3": "abc" is not a number"#);
        let err = parse("label,x\n0,1\n1,NaN\n").unwrap_err();
        assert!(matches!(err, CsvError::NotFinite { line: 3, .. }), "{err}");
        let err = parse("label,x\n0,1e39\n").unwrap_err();
        assert!(matches!(err, CsvError::NotFinite { line: 2, .. }), "{err}");
        let err = parse("label,x,y\n0,,1\n").unwrap_err();
        assert_eq!(err.to_string(), r#"line 2, column "x": empty value (missing values are not supported)"#);
        let err = parse("label,x\n,1\n").unwrap_err();
        assert_eq!(err, CsvError::EmptyLabel { line: 2, column: "\"label\"".into() });
    }

    #[test]
    fn ragged_rows_are_rejected() {
        let err = parse("label,x,y\n0,1,2\n\n1,2\n").unwrap_err();
        assert_eq!(err, CsvError::Ragged { line: 4, expected: 3, found: 2 });
        assert_eq!(err.to_string(), "line 4: 2 fields, but the first row has 3");
    }

    #[test]
    fn empty_inputs_are_rejected() {
        assert_eq!(parse("").unwrap_err(), CsvError::Empty);
        assert_eq!(parse("\n\n").unwrap_err(), CsvError::Empty);
        assert_eq!(parse("label,x\n").unwrap_err(), CsvError::Empty);
        assert_eq!(parse("label\n1\n2\n").unwrap_err(), CsvError::NoFeatures);
        assert_eq!(parse("1\n2\n").unwrap_err(), CsvError::NoFeatures);
    }

    #[test]
    fn bad_label_columns_are_rejected() {
        let err = parse_csv("a,b\n1,2\n", &with_label(LabelColumn::Name("y".into()))).unwrap_err();
        assert_eq!(err.to_string(), r#"label column "y" not found; the header has ["a", "b"]"#);
        let err = parse_csv("1,2\n", &with_label(LabelColumn::Index(2))).unwrap_err();
        assert_eq!(err, CsvError::LabelIndexOutOfRange { index: 2, columns: 2 });
        let opts = CsvOptions {
            label_column: LabelColumn::Name("y".into()),
            has_header: Some(false),
            ..CsvOptions::default()
        };
        assert!(matches!(parse_csv("1,2\n", &opts), Err(CsvError::NameWithoutHeader(_))));
    }

    #[test]
    fn standardize_uses_the_parsed_data() {
        let opts = CsvOptions { standardize: true, ..CsvOptions::default() };
        let ds = parse_csv("label,x,c\n0,1,5\n1,3,5\n", &opts).unwrap();
        // x: mean 2, std 1; c is constant, so only centred.
        assert_eq!(ds.features, vec![-1.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn split_standardizes_with_train_statistics_only() {
        let mut text = String::from("label,x\n");
        for i in 0..100 {
            text.push_str(&format!("{},{}\n", i % 3, i));
        }
        let opts = CsvOptions { standardize: true, ..CsvOptions::default() };
        let split = parse_csv_split(&text, &opts, 0.2, 5).unwrap();
        assert_eq!((split.train.len(), split.test.len()), (80, 20));
        let fitted = Standardizer::fit(&split.train);
        assert!(fitted.mean[0].abs() < 1e-5 && (fitted.std[0] - 1.0).abs() < 1e-5);
        let test_mean = Standardizer::fit(&split.test).mean[0];
        assert!(test_mean.abs() > 1e-4, "test set is not re-centred on itself");
    }

    /// Found by the `csv` fuzz target (from a seed at f32's limits): `x − mean` in f32 overflowed
    /// to −∞ for values near ±3.4e38, so a CSV of finite numbers gave infinite features.
    #[test]
    fn standardizing_values_near_the_f32_limits_stays_finite() {
        let opts = CsvOptions { standardize: true, ..CsvOptions::default() };
        let ds = parse_csv("label,a\n0,3.4e38\n1,3.4e38\n0,-3.4e38\n", &opts).unwrap();
        // mean 3.4e38/3, population std 3.4e38·√8/3: z = 1/√2, 1/√2, −√2.
        let want = [0.5f32.sqrt(), 0.5f32.sqrt(), -(2.0f32.sqrt())];
        for (got, want) in ds.features.iter().zip(want) {
            assert!((got - want).abs() < 1e-5, "{:?}", ds.features);
        }
    }

    /// Test data z-scored with the train part's statistics can lie far outside them: saturated.
    #[test]
    fn a_z_score_beyond_f32_saturates() {
        let fitted = Standardizer { mean: vec![0.0], std: vec![0.5] };
        let mut ds = Dataset {
            sample_shape: vec![1],
            classes: 1,
            class_names: vec!["a".into()],
            features: vec![3e38, -3e38, 2.0],
            labels: vec![0; 3],
        };
        fitted.apply(&mut ds);
        assert_eq!(ds.features, vec![f32::MAX, -f32::MAX, 4.0]);
    }

    #[test]
    fn train_test_split_is_seeded_and_disjoint() {
        let ds = Dataset {
            sample_shape: vec![1],
            classes: 1,
            class_names: vec!["a".into()],
            features: (0..50).map(|i| i as f32).collect(),
            labels: vec![0; 50],
        };
        let a = train_test_split(&ds, 0.3, 9);
        assert_eq!((a.train.len(), a.test.len()), (35, 15));
        assert_eq!(a, train_test_split(&ds, 0.3, 9));
        assert_ne!(a.test.features, train_test_split(&ds, 0.3, 10).test.features);
        let mut all: Vec<f32> = a.train.features.iter().chain(&a.test.features).copied().collect();
        all.sort_by(f32::total_cmp);
        assert_eq!(all, ds.features);
        assert_eq!(train_test_split(&ds, 2.0, 1).test.len(), 50);
        assert_eq!(train_test_split(&ds, f64::NAN, 1).test.len(), 0);
    }
}
