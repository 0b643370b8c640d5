//! `ferry predict`: turns what a user has at hand (a JSON request, inline values, CSV rows) into
//! an Open Inference Protocol v2 request, sends it, and shows the answer as a table.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a request: {message}\n  hint: give a v2 request (`{{\"inputs\": [...]}}`), a v1 one (`{{\"instances\": [...]}}`), --values or --csv", path.display())]
    BadFile { path: PathBuf, message: String },
    #[error("{what}: {message}")]
    BadInput { what: String, message: String },
    #[error(
        "cannot reach the server at {url}: {message}\n  hint: start it with `ferry serve` (or pass --url)"
    )]
    Unreachable { url: String, message: String },
    #[error("the server answered {status}: {message}")]
    Server { status: u16, message: String },
    #[error(
        "model `{model}` takes {inputs} inputs; --values fills one\n  hint: --csv with a column named after each input, or a v2 request file"
    )]
    ManyInputs { model: String, inputs: usize },
}

/// What the user gave.
pub enum Input {
    /// A request file: v2 (`inputs`) or v1 (`instances`).
    File(PathBuf),
    /// Rows of numbers: `1,2,3;4,5,6`.
    Values(String),
    /// A CSV file of rows; a first line that is not numbers is taken as a header.
    Csv(PathBuf),
}

/// The server's answer.
pub struct Answer {
    pub body: Value,
    pub variant: Option<String>,
}

fn client() -> Result<reqwest::Client, PredictError> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| PredictError::Unreachable {
            url: String::new(),
            message: e.to_string(),
        })
}

async fn send(
    c: &reqwest::Client,
    url: &str,
    body: Option<&Value>,
    key: Option<&str>,
) -> Result<(Value, Option<String>), PredictError> {
    let mut req = match body {
        Some(b) => c.post(url).json(b),
        None => c.get(url),
    };
    if let Some(k) = key {
        req = req.header("x-ferry-key", k);
    }
    let resp = req.send().await.map_err(|e| PredictError::Unreachable {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    let status = resp.status().as_u16();
    let variant = resp
        .headers()
        .get("x-ferry-variant")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.text().await.map_err(|e| PredictError::Unreachable {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status >= 400 {
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        return Err(PredictError::Server { status, message });
    }
    Ok((value, variant))
}

/// Sends the input to `model` on the server at `base` (e.g. `http://127.0.0.1:8080`).
pub async fn predict(
    base: &str,
    model: &str,
    input: &Input,
    key: Option<&str>,
) -> Result<Answer, PredictError> {
    let c = client()?;
    let base = base.trim_end_matches('/');
    let (url, body) = match input {
        Input::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| PredictError::Read {
                path: path.clone(),
                source,
            })?;
            let v: Value = serde_json::from_str(&text).map_err(|e| PredictError::BadFile {
                path: path.clone(),
                message: e.to_string(),
            })?;
            if v.get("inputs").is_some() {
                (format!("{base}/v2/models/{model}/infer"), v)
            } else if v.get("instances").is_some() {
                (format!("{base}/v1/models/{model}:predict"), v)
            } else {
                return Err(PredictError::BadFile {
                    path: path.clone(),
                    message: "it has neither `inputs` nor `instances`".into(),
                });
            }
        }
        Input::Values(text) => {
            let rows = parse_rows(text, "--values", ';')?;
            (
                format!("{base}/v2/models/{model}/infer"),
                request_for(&c, base, model, rows).await?,
            )
        }
        Input::Csv(path) => {
            let (meta, _) = send(&c, &format!("{base}/v2/models/{model}"), None, None).await?;
            let body = match table_request(path, &meta)? {
                Some(body) => body,
                None => {
                    let text =
                        std::fs::read_to_string(path).map_err(|source| PredictError::Read {
                            path: path.clone(),
                            source,
                        })?;
                    request_for(&c, base, model, parse_csv(&text, path)?).await?
                }
            };
            (format!("{base}/v2/models/{model}/infer"), body)
        }
    };
    let (body, variant) = send(&c, &url, Some(&body), key).await?;
    Ok(Answer { body, variant })
}

/// A v2 request with every input filled from the CSV columns named after it (an `[N, k]` input
/// from `NAME_0 … NAME_{k-1}`), as `ferry score` reads tables; `None` for a one-input model
/// whose columns the file does not name, whose rows are then read as bare numbers.
fn table_request(path: &Path, meta: &Value) -> Result<Option<Value>, PredictError> {
    let inputs = meta
        .get("inputs")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|i| {
                    Some(crate::server::model::IoSpec {
                        name: i.get("name")?.as_str()?.to_string(),
                        datatype: crate::server::tensor::DataType::from_name(
                            i.get("datatype")?.as_str()?,
                        )?,
                        shape: i
                            .get("shape")?
                            .as_array()?
                            .iter()
                            .filter_map(Value::as_i64)
                            .collect(),
                    })
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let table = crate::score::table_inputs(path, inputs).map_err(|e| PredictError::BadInput {
        what: "--csv".into(),
        message: e.to_string(),
    })?;
    Ok(table.map(|tensors| {
        let inputs: Vec<Value> = tensors
            .into_iter()
            .map(|(name, t)| {
                json!({
                    "name": name,
                    "datatype": t.data.datatype().name(),
                    "shape": t.shape,
                    "data": t.data,
                })
            })
            .collect();
        json!({ "inputs": inputs })
    }))
}

/// A v2 request for the model's single input, typed from the model's metadata.
async fn request_for(
    c: &reqwest::Client,
    base: &str,
    model: &str,
    rows: Vec<Vec<f64>>,
) -> Result<Value, PredictError> {
    let (meta, _) = send(c, &format!("{base}/v2/models/{model}"), None, None).await?;
    let inputs = meta
        .get("inputs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if inputs.len() != 1 {
        return Err(PredictError::ManyInputs {
            model: model.to_string(),
            inputs: inputs.len(),
        });
    }
    let name = inputs[0]
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("input");
    let datatype = inputs[0]
        .get("datatype")
        .and_then(Value::as_str)
        .unwrap_or("FP32");
    let shape = inputs[0]
        .get("shape")
        .and_then(Value::as_array)
        .map(|s| s.iter().filter_map(Value::as_i64).collect::<Vec<_>>())
        .unwrap_or_default();
    request_body(name, datatype, &shape, &rows)
}

/// The v2 request that fills input `name` (of the model's `shape`) with `rows`. A rank-1 input
/// (e.g. a batch of ids) takes one value per row.
fn request_body(
    name: &str,
    datatype: &str,
    shape: &[i64],
    rows: &[Vec<f64>],
) -> Result<Value, PredictError> {
    let cols = rows.first().map_or(0, Vec::len);
    let rank_one = shape.len() == 1;
    if rank_one && cols != 1 {
        return Err(PredictError::BadInput {
            what: format!("input `{name}`"),
            message: format!(
                "the model takes one value per row; got {cols}\n  hint: separate rows with ';', e.g. --values '1;2;3'"
            ),
        });
    }
    if let Some(&want) = shape.get(1).filter(|w| **w > 0)
        && want as usize != cols
    {
        return Err(PredictError::BadInput {
            what: format!("input `{name}`"),
            message: format!("each row needs {want} values; got {cols}"),
        });
    }
    let data: Vec<Value> = rows
        .iter()
        .flatten()
        .map(|x| {
            if datatype.starts_with("FP") {
                json!(x)
            } else if datatype == "BOOL" {
                json!(*x != 0.0)
            } else {
                json!(*x as i64)
            }
        })
        .collect();
    let dims = if rank_one {
        json!([rows.len()])
    } else {
        json!([rows.len(), cols])
    };
    Ok(json!({
        "inputs": [{
            "name": name,
            "datatype": datatype,
            "shape": dims,
            "data": data,
        }]
    }))
}

fn parse_rows(text: &str, what: &str, sep: char) -> Result<Vec<Vec<f64>>, PredictError> {
    let mut rows = Vec::new();
    for (i, row) in text
        .split(sep)
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .enumerate()
    {
        rows.push(parse_row(row).map_err(|message| PredictError::BadInput {
            what: format!("{what}, row {}", i + 1),
            message,
        })?);
    }
    check_rows(&rows, what)?;
    Ok(rows)
}

fn parse_row(row: &str) -> Result<Vec<f64>, String> {
    row.split(',')
        .map(|v| {
            let v = v.trim();
            v.parse::<f64>()
                .map_err(|_| format!("{v:?} is not a number"))
        })
        .collect()
}

fn parse_csv(text: &str, path: &Path) -> Result<Vec<Vec<f64>>, PredictError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match parse_row(line) {
            Ok(r) => rows.push(r),
            // A header names the columns; anything else that is not numbers is a mistake.
            Err(_) if i == 0 => {}
            Err(message) => {
                return Err(PredictError::BadInput {
                    what: format!("{}:{}", path.display(), i + 1),
                    message,
                });
            }
        }
    }
    check_rows(&rows, &path.display().to_string())?;
    Ok(rows)
}

fn check_rows(rows: &[Vec<f64>], what: &str) -> Result<(), PredictError> {
    let Some(first) = rows.first() else {
        return Err(PredictError::BadInput {
            what: what.to_string(),
            message: "no rows".into(),
        });
    };
    if let Some((i, r)) = rows
        .iter()
        .enumerate()
        .find(|(_, r)| r.len() != first.len())
    {
        return Err(PredictError::BadInput {
            what: what.to_string(),
            message: format!(
                "row {} has {} values, row 1 has {}",
                i + 1,
                r.len(),
                first.len()
            ),
        });
    }
    Ok(())
}

/// A table of the answer: one line per row, one column per output.
pub fn table(body: &Value) -> String {
    if let Some(preds) = body.get("predictions").and_then(Value::as_array) {
        let mut out = String::from("row  prediction\n");
        for (i, p) in preds.iter().enumerate() {
            out.push_str(&format!("{i:<4} {p}\n"));
        }
        return out;
    }
    let outputs = body
        .get("outputs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut cols: Vec<(String, Vec<String>)> = Vec::new();
    let mut nrows = 0;
    for o in &outputs {
        let name = o.get("name").and_then(Value::as_str).unwrap_or("?");
        let shape: Vec<usize> = o
            .get("shape")
            .and_then(Value::as_array)
            .map(|s| {
                s.iter()
                    .filter_map(Value::as_u64)
                    .map(|d| d as usize)
                    .collect()
            })
            .unwrap_or_default();
        let data = o
            .get("data")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let rows = shape.first().copied().unwrap_or(1).max(1);
        let per = data.len().checked_div(rows).unwrap_or(0);
        let cells: Vec<String> = (0..rows)
            .map(|r| {
                let part = &data[(r * per).min(data.len())..((r + 1) * per).min(data.len())];
                let fmt: Vec<String> = part.iter().map(fmt_value).collect();
                if fmt.len() == 1 {
                    fmt[0].clone()
                } else {
                    format!("[{}]", fmt.join(", "))
                }
            })
            .collect();
        nrows = nrows.max(rows);
        cols.push((name.to_string(), cells));
    }
    let widths: Vec<usize> = cols
        .iter()
        .map(|(n, c)| {
            c.iter()
                .map(String::len)
                .chain([n.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = format!("{:<4}", "row");
    for ((n, _), w) in cols.iter().zip(&widths) {
        out.push_str(&format!(" {n:<w$}"));
    }
    out.push('\n');
    for r in 0..nrows {
        out.push_str(&format!("{r:<4}"));
        for ((_, c), w) in cols.iter().zip(&widths) {
            out.push_str(&format!(" {:<w$}", c.get(r).map_or("", String::as_str)));
        }
        out.push('\n');
    }
    out
}

fn fmt_value(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if v.is_f64() => format!("{f:.4}"),
        _ => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_from_values_and_csv() {
        assert_eq!(
            parse_rows("1,2;3,4", "--values", ';').unwrap(),
            vec![vec![1.0, 2.0], vec![3.0, 4.0]]
        );
        let err = parse_rows("1,2;3", "--values", ';').unwrap_err();
        assert!(err.to_string().contains("row 2 has 1 values"), "{err}");
        let err = parse_rows("1,x", "--values", ';').unwrap_err();
        assert!(err.to_string().contains("\"x\" is not a number"), "{err}");
        let p = Path::new("rows.csv");
        assert_eq!(
            parse_csv("a,b\n1,2\n\n3,4\n", p).unwrap(),
            vec![vec![1.0, 2.0], vec![3.0, 4.0]]
        );
        assert!(
            parse_csv("a,b\n1,2\nx,4\n", p)
                .unwrap_err()
                .to_string()
                .contains("rows.csv:3")
        );
    }

    #[test]
    fn a_rank_one_input_takes_one_value_per_row() {
        let rows = parse_rows("7;42", "--values", ';').unwrap();
        let body = request_body("user_id", "INT64", &[-1], &rows).unwrap();
        assert_eq!(body["inputs"][0]["shape"], json!([2]));
        assert_eq!(body["inputs"][0]["data"], json!([7, 42]));
        let body = request_body("features", "FP32", &[-1, 1], &rows).unwrap();
        assert_eq!(body["inputs"][0]["shape"], json!([2, 1]));
        let rows = parse_rows("7,42", "--values", ';').unwrap();
        let err = request_body("user_id", "INT64", &[-1], &rows).unwrap_err();
        assert!(
            err.to_string().contains("one value per row; got 2"),
            "{err}"
        );
        let err = request_body("features", "FP32", &[-1, 3], &rows).unwrap_err();
        assert!(err.to_string().contains("needs 3 values; got 2"), "{err}");
    }

    #[test]
    fn table_shows_a_row_per_prediction() {
        let body = json!({"outputs": [
            {"name": "label", "shape": [2], "datatype": "INT64", "data": [0, 1]},
            {"name": "probabilities", "shape": [2, 2], "datatype": "FP32", "data": [0.9, 0.1, 0.25, 0.75]}
        ]});
        let t = table(&body);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("row  label probabilities"), "{t}");
        assert!(
            lines[2].contains("1") && lines[2].contains("[0.2500, 0.7500]"),
            "{t}"
        );
    }
}
