//! How two models' answers to the same request agree: a shadow's against the served model's
//! (live), or a candidate's against a traffic log's (`ferry replay`).
//!
//! Rows are the first axis. Integer, boolean and string outputs are labels: a row agrees when
//! it is equal. Floating-point outputs are scores: a row agrees when its top-1 index agrees
//! (along the last axis, when it has more than one element) or, for one value per row, when the
//! values are within a tolerance. Anything else (a missing output, another datatype or shape)
//! is a mismatch, and every row disagrees.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::tensor::TensorData;
use super::traffic_log::LoggedTensor;

/// How far apart two scores may be and still agree: `|a - b| <= absolute + relative * max(|a|,
/// |b|)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub absolute: f64,
    pub relative: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            absolute: 1e-4,
            relative: 1e-4,
        }
    }
}

impl Tolerance {
    fn allows(&self, a: f64, b: f64) -> bool {
        let d = abs_diff(a, b);
        d == 0.0 || (d.is_finite() && d <= self.absolute + self.relative * a.abs().max(b.abs()))
    }
}

/// Scores' top-k overlap looks at the `k` best, at most this many.
pub const TOP_K: usize = 3;

/// How all outputs agreed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub rows: usize,
    /// Rows on which every output agrees.
    pub agreeing_rows: usize,
    pub outputs: Vec<OutputComparison>,
}

impl Comparison {
    /// Every row of every output agrees.
    pub fn agrees(&self) -> bool {
        self.agreeing_rows == self.rows && self.outputs.iter().all(|o| o.mismatch.is_none())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Integers, booleans, strings: equal or not.
    Label,
    /// Floating point: near or not.
    Score,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Label => "label",
            Kind::Score => "score",
        }
    }
}

/// How one output agreed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputComparison {
    pub name: String,
    pub kind: Kind,
    pub rows: usize,
    pub agreeing_rows: usize,
    /// Scores: the largest absolute difference (`Infinity` where one side is NaN).
    #[serde(with = "non_finite")]
    pub max_abs_diff: Option<f64>,
    /// Scores with more than one value along the last axis: rows whose top-1 index agrees, of
    /// all rows.
    pub top1: Option<(usize, usize)>,
    /// With `top1`: the share of the top-k indices both sides have, averaged over rows.
    pub topk_overlap: Option<f64>,
    /// The `k` of `topk_overlap`.
    pub top_k: Option<usize>,
    /// Scores: each row's largest absolute difference.
    #[serde(skip)]
    pub row_deltas: Vec<f64>,
    /// Why the output could not be compared (every row disagrees).
    pub mismatch: Option<String>,
}

/// Compares the `candidate`'s outputs with the `primary`'s, output by output (by name). Outputs
/// that only the candidate has are left out: a request may ask for some outputs only.
pub fn compare(
    primary: &[LoggedTensor],
    candidate: &[LoggedTensor],
    tolerance: Tolerance,
) -> Comparison {
    let rows = primary
        .iter()
        .filter(|t| holds(t))
        .map(|t| rows_of(t.shape()))
        .max()
        .unwrap_or(0);
    let mut row_agrees = vec![true; rows];
    let mut outputs = Vec::with_capacity(primary.len());
    for p in primary {
        let c = candidate.iter().find(|c| c.name() == p.name());
        let (output, verdicts) = compare_output(p, c, tolerance);
        match verdicts {
            Some(verdicts) => {
                for (agrees, ok) in row_agrees.iter_mut().zip(verdicts) {
                    *agrees &= ok;
                }
            }
            None => row_agrees.fill(false),
        }
        outputs.push(output);
    }
    Comparison {
        rows,
        agreeing_rows: row_agrees.iter().filter(|&&a| a).count(),
        outputs,
    }
}

/// Rows along the first axis; a scalar is one row.
fn rows_of(shape: &[usize]) -> usize {
    shape.first().copied().unwrap_or(1)
}

/// Elements in a shape, if that many can exist.
fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// Rows of nothing beyond which an empty tensor is not compared: a shape like `[10^18, 0]`
/// holds no data, but its rows' verdicts would not fit in memory.
const MAX_EMPTY_ROWS: usize = 1 << 20;

/// Whether the tensor holds as many values as its shape says, in rows that can be counted.
fn holds(t: &LoggedTensor) -> bool {
    elements(t.shape()) == Some(t.len()) && rows_of(t.shape()) <= t.len().max(MAX_EMPTY_ROWS)
}

/// The output's comparison, and each row's verdict (`None` on a mismatch).
fn compare_output(
    p: &LoggedTensor,
    c: Option<&LoggedTensor>,
    tolerance: Tolerance,
) -> (OutputComparison, Option<Vec<bool>>) {
    let kind = if is_float(p.data()) {
        Kind::Score
    } else {
        Kind::Label
    };
    let rows = rows_of(p.shape());
    let mut out = OutputComparison {
        name: p.name().to_string(),
        kind,
        rows,
        agreeing_rows: 0,
        max_abs_diff: None,
        top1: None,
        topk_overlap: None,
        top_k: None,
        row_deltas: Vec::new(),
        mismatch: None,
    };
    let mismatch = match c {
        None => Some(format!("the candidate has no output '{}'", p.name())),
        Some(c) if c.datatype() != p.datatype() => Some(format!(
            "datatype {} against the candidate's {}",
            p.datatype(),
            c.datatype()
        )),
        Some(c) if c.shape() != p.shape() => Some(format!(
            "shape {:?} against the candidate's {:?}",
            p.shape(),
            c.shape()
        )),
        Some(c) => [p, c]
            .iter()
            .find(|t| !holds(t))
            .map(|t| format!("shape {:?} does not hold its {} values", t.shape(), t.len())),
    };
    let Some(c) = c.filter(|_| mismatch.is_none()) else {
        out.mismatch = mismatch;
        return (out, None);
    };
    // Values per row; a scalar's one value is its row.
    let width = elements(p.shape().get(1..).unwrap_or(&[])).unwrap_or(0);
    let verdicts = match kind {
        Kind::Label => label_rows(p.data(), c.data(), rows, width),
        Kind::Score => {
            let (a, b) = (floats(p.data()), floats(c.data()));
            // Top-1 along the last axis, when a row holds more than one value along it.
            let group = match p.shape() {
                [_, .., last] if *last > 1 => *last,
                _ => 1,
            };
            let deltas: Vec<f64> = (0..rows)
                .map(|r| {
                    let range = r * width..(r + 1) * width;
                    a[range.clone()]
                        .iter()
                        .zip(&b[range])
                        .map(|(&x, &y)| abs_diff(x, y))
                        .fold(0.0, f64::max)
                })
                .collect();
            out.max_abs_diff = Some(deltas.iter().copied().fold(0.0, f64::max));
            out.row_deltas = deltas;
            if group > 1 {
                let k = TOP_K.min(group);
                let mut top1 = 0;
                let mut overlap = 0.0;
                let mut groups = 0usize;
                let verdicts: Vec<bool> = (0..rows)
                    .map(|r| {
                        let row = r * width..(r + 1) * width;
                        let agrees =
                            a[row.clone()]
                                .chunks(group)
                                .zip(b[row].chunks(group))
                                .all(|(x, y)| {
                                    let (tx, ty) = (top_k(x, k), top_k(y, k));
                                    overlap += tx.iter().filter(|i| ty.contains(i)).count() as f64
                                        / k as f64;
                                    groups += 1;
                                    tx[0] == ty[0]
                                });
                        top1 += usize::from(agrees);
                        agrees
                    })
                    .collect();
                out.top1 = Some((top1, rows));
                out.topk_overlap = (groups > 0).then(|| overlap / groups as f64);
                out.top_k = Some(k);
                verdicts
            } else {
                (0..rows)
                    .map(|r| {
                        let range = r * width..(r + 1) * width;
                        a[range.clone()]
                            .iter()
                            .zip(&b[range])
                            .all(|(&x, &y)| tolerance.allows(x, y))
                    })
                    .collect()
            }
        }
    };
    out.agreeing_rows = verdicts.iter().filter(|&&v| v).count();
    (out, Some(verdicts))
}

fn is_float(data: &TensorData) -> bool {
    matches!(
        data,
        TensorData::Fp16(_) | TensorData::Fp32(_) | TensorData::Fp64(_)
    )
}

fn floats(data: &TensorData) -> Vec<f64> {
    match data {
        TensorData::Fp16(v) => v.iter().map(|x| x.to_f64()).collect(),
        TensorData::Fp32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        TensorData::Fp64(v) => v.clone(),
        _ => Vec::new(),
    }
}

/// Whether each row is equal; the buffers have the same type and length (checked before).
fn label_rows(a: &TensorData, b: &TensorData, rows: usize, width: usize) -> Vec<bool> {
    fn equal_rows<T: PartialEq>(a: &[T], b: &[T], rows: usize, width: usize) -> Vec<bool> {
        (0..rows)
            .map(|r| a[r * width..(r + 1) * width] == b[r * width..(r + 1) * width])
            .collect()
    }
    match (a, b) {
        (TensorData::Bool(a), TensorData::Bool(b)) => equal_rows(a, b, rows, width),
        (TensorData::Uint8(a), TensorData::Uint8(b)) => equal_rows(a, b, rows, width),
        (TensorData::Uint16(a), TensorData::Uint16(b)) => equal_rows(a, b, rows, width),
        (TensorData::Uint32(a), TensorData::Uint32(b)) => equal_rows(a, b, rows, width),
        (TensorData::Uint64(a), TensorData::Uint64(b)) => equal_rows(a, b, rows, width),
        (TensorData::Int8(a), TensorData::Int8(b)) => equal_rows(a, b, rows, width),
        (TensorData::Int16(a), TensorData::Int16(b)) => equal_rows(a, b, rows, width),
        (TensorData::Int32(a), TensorData::Int32(b)) => equal_rows(a, b, rows, width),
        (TensorData::Int64(a), TensorData::Int64(b)) => equal_rows(a, b, rows, width),
        (TensorData::Bytes(a), TensorData::Bytes(b)) => equal_rows(a, b, rows, width),
        _ => vec![false; rows],
    }
}

/// `|a - b|`, where NaN equals NaN and differs from any number infinitely.
fn abs_diff(a: f64, b: f64) -> f64 {
    if a == b || (a.is_nan() && b.is_nan()) {
        0.0
    } else if a.is_nan() || b.is_nan() {
        f64::INFINITY
    } else {
        (a - b).abs()
    }
}

/// The indices of the `k` largest values, largest first; NaN ranks below every number and ties
/// go to the lower index (as `argmax` does).
fn top_k(values: &[f64], k: usize) -> Vec<usize> {
    let above = |x: f64, y: f64| (!x.is_nan() && y.is_nan()) || x > y;
    let mut chosen: Vec<usize> = Vec::with_capacity(k);
    for _ in 0..k.min(values.len()) {
        let mut best: Option<usize> = None;
        for (i, &v) in values.iter().enumerate() {
            if chosen.contains(&i) {
                continue;
            }
            if best.is_none_or(|b| above(v, values[b])) {
                best = Some(i);
            }
        }
        chosen.extend(best);
    }
    chosen
}

/// The JSON string for a value JSON numbers cannot hold.
pub(crate) fn non_finite_name(x: f64) -> &'static str {
    if x.is_nan() {
        "NaN"
    } else if x > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

/// An optional float in JSON: a number, or `"NaN"`, `"Infinity"`, `"-Infinity"`, or null.
pub(crate) mod non_finite {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match x {
            Some(x) if x.is_finite() => s.serialize_f64(*x),
            Some(x) => s.serialize_str(non_finite_name(*x)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Value {
            Number(f64),
            Text(String),
        }
        Ok(match Option::<Value>::deserialize(d)? {
            None => None,
            Some(Value::Number(x)) => Some(x),
            Some(Value::Text(t)) => Some(match t.as_str() {
                "NaN" => f64::NAN,
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "{other:?} is not a number"
                    )));
                }
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::model::HostTensor;

    fn t(name: &str, shape: &[usize], data: TensorData) -> LoggedTensor {
        LoggedTensor::from((
            name.to_string(),
            HostTensor {
                shape: shape.to_vec(),
                data,
            },
        ))
    }

    fn fp32(name: &str, shape: &[usize], v: &[f32]) -> LoggedTensor {
        t(name, shape, TensorData::Fp32(v.to_vec()))
    }

    fn run(primary: &[LoggedTensor], candidate: &[LoggedTensor]) -> Comparison {
        compare(primary, candidate, Tolerance::default())
    }

    #[test]
    fn labels_agree_row_by_row() {
        let p = [t("label", &[4], TensorData::Int64(vec![0, 1, 1, 0]))];
        let c = [t("label", &[4], TensorData::Int64(vec![0, 1, 0, 0]))];
        let cmp = run(&p, &c);
        assert_eq!((cmp.rows, cmp.agreeing_rows), (4, 3));
        assert!(!cmp.agrees());
        let out = &cmp.outputs[0];
        assert_eq!(out.kind, Kind::Label);
        assert_eq!((out.rows, out.agreeing_rows), (4, 3));
        assert_eq!(out.max_abs_diff, None);
        assert_eq!(out.top1, None);
        assert!(out.row_deltas.is_empty());

        // A row of several labels agrees only when all of them do.
        let p = [t(
            "tags",
            &[2, 2],
            TensorData::Bytes(vec!["a".into(), "b".into(), "c".into(), "d".into()]),
        )];
        let c = [t(
            "tags",
            &[2, 2],
            TensorData::Bytes(vec!["a".into(), "b".into(), "c".into(), "x".into()]),
        )];
        assert_eq!(run(&p, &c).agreeing_rows, 1);
        let p = [t("flag", &[2, 1], TensorData::Bool(vec![true, false]))];
        assert!(run(&p, &p).agrees());
        let p = [t("one", &[], TensorData::Uint8(vec![7]))];
        let cmp = run(&p, &p);
        assert_eq!((cmp.rows, cmp.agreeing_rows), (1, 1));
    }

    #[test]
    fn scores_agree_on_their_top_1_and_report_deltas() {
        let p = [fp32(
            "p",
            &[3, 4],
            &[
                0.1, 0.2, 0.3, 0.4, //
                0.9, 0.05, 0.03, 0.02, //
                0.25, 0.25, 0.4, 0.1,
            ],
        )];
        let c = [fp32(
            "p",
            &[3, 4],
            &[
                0.1, 0.2, 0.3, 0.4, //
                0.4, 0.5, 0.05, 0.05, //
                0.2, 0.3, 0.45, 0.05,
            ],
        )];
        let cmp = run(&p, &c);
        assert_eq!((cmp.rows, cmp.agreeing_rows), (3, 2));
        let out = &cmp.outputs[0];
        assert_eq!(out.kind, Kind::Score);
        assert_eq!(out.top1, Some((2, 3)));
        assert_eq!(out.top_k, Some(3));
        // Row 1: top-3 {0, 1, 2} against {1, 0, 2 or 3}: ties go to the lower index, so {1, 0, 2}.
        // Row 2: {2, 0, 1} against {2, 1, 0}.
        let overlap = out.topk_overlap.unwrap();
        assert!((overlap - 1.0).abs() < 1e-12, "{overlap}");
        let deltas: Vec<f64> = out
            .row_deltas
            .iter()
            .map(|d| (d * 1e6).round() / 1e6)
            .collect();
        assert_eq!(deltas, [0.0, 0.5, 0.05]);
        assert_eq!(out.max_abs_diff.map(|d| (d * 1e6).round() / 1e6), Some(0.5));

        // Top-k overlap below 1 when the sets differ.
        let p = [fp32("p", &[1, 5], &[5.0, 4.0, 3.0, 2.0, 1.0])];
        let c = [fp32("p", &[1, 5], &[5.0, 1.0, 2.0, 3.0, 4.0])];
        let out = &run(&p, &c).outputs[0];
        assert_eq!(out.top1, Some((1, 1)));
        assert!((out.topk_overlap.unwrap() - 1.0 / 3.0).abs() < 1e-12);

        // Two values: k is 2.
        let p = [fp32("p", &[1, 2], &[0.7, 0.3])];
        assert_eq!(run(&p, &p).outputs[0].top_k, Some(2));
    }

    #[test]
    fn single_scores_agree_within_the_tolerance() {
        let p = [fp32("y", &[4, 1], &[1.0, 1000.0, 0.0, -3.0])];
        let c = [fp32("y", &[4, 1], &[1.00005, 1000.15, 0.0002, -3.0])];
        let cmp = run(&p, &c);
        let out = &cmp.outputs[0];
        assert_eq!(out.top1, None);
        assert_eq!(out.topk_overlap, None);
        // 1e-4 + 1e-4 * 1000 = 0.1001 < 0.15; 0.0002 > 1e-4.
        assert_eq!(out.agreeing_rows, 2);
        let cmp = compare(
            &p,
            &c,
            Tolerance {
                absolute: 1e-3,
                relative: 1e-3,
            },
        );
        assert!(cmp.agrees());
        // A 1-D output: each value is a row.
        let p = [t("y", &[3], TensorData::Fp64(vec![0.5, 0.25, 0.125]))];
        let c = [t("y", &[3], TensorData::Fp64(vec![0.5, 0.35, 0.125]))];
        let cmp = run(&p, &c);
        assert_eq!((cmp.rows, cmp.agreeing_rows), (3, 2));
        assert_eq!(cmp.outputs[0].top1, None);
        let p = [t(
            "h",
            &[1, 1],
            TensorData::Fp16(vec![half::f16::from_f32(0.5)]),
        )];
        assert!(run(&p, &p).agrees());
    }

    #[test]
    fn nan_equals_nan_and_differs_from_numbers_infinitely() {
        let p = [fp32("y", &[3, 1], &[f32::NAN, f32::NAN, f32::INFINITY])];
        let c = [fp32("y", &[3, 1], &[f32::NAN, 1.0, f32::INFINITY])];
        let cmp = run(&p, &c);
        let out = &cmp.outputs[0];
        assert_eq!(out.agreeing_rows, 2);
        assert_eq!(out.row_deltas, [0.0, f64::INFINITY, 0.0]);
        assert_eq!(out.max_abs_diff, Some(f64::INFINITY));
        // Infinity against a finite number is never within a relative tolerance.
        let c = [fp32("y", &[3, 1], &[f32::NAN, f32::NAN, 5.0])];
        assert_eq!(run(&p, &c).agreeing_rows, 2);
        // NaN ranks last for the top-1.
        let p = [fp32(
            "p",
            &[2, 3],
            &[f32::NAN, 0.2, 0.1, f32::NAN, f32::NAN, f32::NAN],
        )];
        let c = [fp32(
            "p",
            &[2, 3],
            &[0.0, 0.2, 0.1, f32::NAN, f32::NAN, f32::NAN],
        )];
        let cmp = run(&p, &c);
        assert_eq!(cmp.outputs[0].top1, Some((2, 2)));
        // Infinity and NaN go into JSON as strings, and come back.
        let json = serde_json::to_string(&run(
            &[fp32("y", &[1], &[f32::NAN])],
            &[fp32("y", &[1], &[0.0])],
        ))
        .unwrap();
        assert!(json.contains("\"max_abs_diff\":\"Infinity\""), "{json}");
        assert!(!json.contains("row_deltas"), "{json}");
        let back: Comparison = serde_json::from_str(&json).unwrap();
        assert_eq!(back.outputs[0].max_abs_diff, Some(f64::INFINITY));
    }

    #[test]
    fn mismatches_disagree_on_every_row_without_panicking() {
        let p = [
            fp32("p", &[2, 2], &[0.1, 0.9, 0.8, 0.2]),
            t("label", &[2], TensorData::Int64(vec![1, 0])),
        ];
        // Another shape.
        let c = [
            fp32("p", &[2, 3], &[0.1, 0.9, 0.0, 0.8, 0.2, 0.0]),
            t("label", &[2], TensorData::Int64(vec![1, 0])),
        ];
        let cmp = run(&p, &c);
        assert_eq!((cmp.rows, cmp.agreeing_rows), (2, 0));
        assert!(
            cmp.outputs[0]
                .mismatch
                .as_deref()
                .unwrap()
                .contains("[2, 3]")
        );
        assert_eq!(cmp.outputs[1].agreeing_rows, 2);
        assert!(!cmp.agrees());
        // Another datatype.
        let c = [
            t("p", &[2, 2], TensorData::Fp64(vec![0.1, 0.9, 0.8, 0.2])),
            t("label", &[2], TensorData::Int64(vec![1, 0])),
        ];
        let cmp = run(&p, &c);
        assert_eq!(cmp.agreeing_rows, 0);
        assert!(cmp.outputs[0].mismatch.as_deref().unwrap().contains("FP64"));
        // Missing; the candidate's extra outputs are ignored.
        let c = [
            t("label", &[2], TensorData::Int64(vec![1, 0])),
            t("extra", &[2], TensorData::Int64(vec![5, 5])),
        ];
        let cmp = run(&p, &c);
        assert_eq!(cmp.agreeing_rows, 0);
        assert_eq!(cmp.outputs.len(), 2);
        assert!(
            cmp.outputs[0]
                .mismatch
                .as_deref()
                .unwrap()
                .contains("no output 'p'")
        );
        // A shape that does not hold the data.
        let bad = [fp32("p", &[3, 2], &[0.1, 0.9])];
        let cmp = run(&bad, &bad);
        assert_eq!(cmp.agreeing_rows, 0);
        assert!(cmp.outputs[0].mismatch.is_some());
        let huge = [fp32("p", &[usize::MAX, 2], &[0.1, 0.9])];
        assert_eq!(run(&huge, &huge).agreeing_rows, 0);
        let nothing = [fp32("p", &[usize::MAX / 2, 0], &[])];
        let cmp = run(&nothing, &nothing);
        assert!(cmp.outputs[0].mismatch.is_some());
        assert!(!cmp.agrees());
        // Nothing to compare.
        assert!(run(&[], &c).agrees());
        // Empty batches.
        let empty = [fp32("p", &[0, 2], &[])];
        let cmp = run(&empty, &empty);
        assert_eq!((cmp.rows, cmp.agreeing_rows), (0, 0));
        assert!(cmp.agrees());
    }
}
