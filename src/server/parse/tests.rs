//! Whole requests through both readers, and the helpers the other tests here share: every body is
//! parsed both ways, and the two answers must agree.

use super::*;

pub(super) const LIMIT: usize = 1 << 20;

/// Parses `body` both ways and checks that they agree, bit for bit.
pub(super) fn parse(body: &str) -> Result<InferRequest, String> {
    parse_limited(body.as_bytes(), LIMIT)
}

pub(super) fn parse_limited(body: &[u8], limit: usize) -> Result<InferRequest, String> {
    let got = parse_infer(body, None, limit);
    let general = parse_infer_general(body, None, limit);
    assert_eq!(
        format!("{got:?}"),
        format!("{general:?}"),
        "the scan and the general parser disagree on {}",
        String::from_utf8_lossy(body)
    );
    got
}

/// A body of JSON and binary data, parsed both ways.
pub(super) fn parse_binary(json: &str, binary: &[u8]) -> Result<InferRequest, String> {
    let body = [json.as_bytes(), binary].concat();
    let got = parse_infer(&body, Some(json.len()), LIMIT);
    let general = parse_infer_general(&body, Some(json.len()), LIMIT);
    assert_eq!(format!("{got:?}"), format!("{general:?}"), "{json}");
    got
}

pub(super) fn le_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub(super) fn instances(
    body: &[u8],
    datatype: DataType,
    limit: usize,
) -> Result<(Vec<usize>, TensorData), String> {
    let got = parse_instances(body, datatype, limit);
    let general = parse_instances_general(body, datatype, limit);
    assert_eq!(
        format!("{got:?}"),
        format!("{general:?}"),
        "{}",
        String::from_utf8_lossy(body)
    );
    got
}

#[test]
fn flat_request_parses_into_typed_buffers() {
    let req = parse(
        r#"{"id":"r1","parameters":{"x":1},"inputs":[{"name":"X","shape":[2,2],"datatype":"FP32","data":[1,2.5,-3,4e1]},
                {"name":"B","shape":[3],"datatype":"BOOL","data":[true,false,true]}],
                "outputs":[{"name":"Y","parameters":{}}]}"#,
    )
    .unwrap();
    assert_eq!(req.id.as_deref(), Some("r1"));
    assert_eq!(req.outputs, Some(vec!["Y".to_string()]));
    assert_eq!(req.inputs.len(), 2);
    assert_eq!(req.inputs[0].name, "X");
    assert_eq!(req.inputs[0].shape, vec![2, 2]);
    assert_eq!(
        req.inputs[0].data,
        TensorData::Fp32(vec![1.0, 2.5, -3.0, 40.0])
    );
    assert_eq!(
        req.inputs[1].data,
        TensorData::Bool(vec![true, false, true])
    );
}

#[test]
fn nested_data_must_match_the_shape() {
    let ok = parse(
        r#"{"inputs":[{"name":"X","shape":[2,3],"datatype":"INT64","data":[[1,2,3],[4,5,6]]}]}"#,
    )
    .unwrap();
    assert_eq!(ok.inputs[0].data, TensorData::Int64(vec![1, 2, 3, 4, 5, 6]));

    let transposed = parse(
        r#"{"inputs":[{"name":"X","shape":[2,3],"datatype":"INT64","data":[[1,2],[3,4],[5,6]]}]}"#,
    )
    .unwrap_err();
    assert!(transposed.contains("input 'X'"), "{transposed}");
    assert!(transposed.contains("[3, 2]"), "{transposed}");

    let ragged =
        parse(r#"{"inputs":[{"name":"X","shape":[2,2],"datatype":"INT64","data":[[1,2],[3]]}]}"#)
            .unwrap_err();
    assert!(ragged.contains("ragged"), "{ragged}");

    let mixed =
        parse(r#"{"inputs":[{"name":"X","shape":[2,2],"datatype":"INT64","data":[1,[2,3]]}]}"#)
            .unwrap_err();
    assert!(mixed.contains("ragged"), "{mixed}");
}

#[test]
fn data_length_must_equal_shape_product() {
    let err =
        parse(r#"{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[1,2,3]}]}"#)
            .unwrap_err();
    assert!(err.contains("input 'features'"), "{err}");
    assert!(err.contains("3 elements"), "{err}");
    assert!(err.contains("needs 4"), "{err}");
}

#[test]
fn huge_shape_is_refused_before_data() {
    let err = parse(
        r#"{"inputs":[{"name":"features","shape":[1000000000,78],"datatype":"FP32","data":[1]}]}"#,
    )
    .unwrap_err();
    assert!(err.contains("78000000000 elements"), "{err}");
    assert!(err.contains("input 'features'"), "{err}");
    let negative = parse(r#"{"inputs":[{"name":"X","shape":[-1,3],"datatype":"FP32","data":[]}]}"#)
        .unwrap_err();
    assert!(negative.contains("negative"), "{negative}");
}

#[test]
fn too_much_data_is_refused_while_parsing() {
    let data: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    let body = format!(
        r#"{{"inputs":[{{"data":[{}],"name":"X","shape":[20],"datatype":"INT32"}}]}}"#,
        data.join(",")
    );
    let err = parse_limited(body.as_bytes(), 10).unwrap_err();
    assert!(err.contains("more than the limit of 10"), "{err}");
}

#[test]
fn data_before_datatype_is_converted_afterwards() {
    let req = parse(r#"{"inputs":[{"data":[[1,2]],"shape":[1,2],"name":"X","datatype":"UINT8"}]}"#)
        .unwrap();
    assert_eq!(req.inputs[0].data, TensorData::Uint8(vec![1, 2]));
    let err = parse(r#"{"inputs":[{"data":[1,300],"shape":[2],"name":"X","datatype":"UINT8"}]}"#)
        .unwrap_err();
    assert!(err.contains("element 1"), "{err}");
    assert!(err.contains("300"), "{err}");
    assert!(err.contains("UINT8"), "{err}");
}

#[test]
fn element_types_are_checked() {
    for (datatype, data, bad) in [
        ("INT64", "[1, 1.5]", "1.5"),
        ("INT8", "[1, 128]", "128"),
        ("UINT32", "[1, -1]", "-1"),
        ("BOOL", "[true, 1]", "1"),
        ("FP32", r#"[1, "x"]"#, "\"x\""),
        ("BYTES", r#"["a", 1]"#, "1"),
        ("FP64", "[1, null]", "null"),
    ] {
        let body = format!(
            r#"{{"inputs":[{{"name":"X","shape":[2],"datatype":"{datatype}","data":{data}}}]}}"#
        );
        let err = parse(&body).unwrap_err();
        assert!(err.contains("element 1"), "{datatype}: {err}");
        assert!(err.contains(bad), "{datatype}: {err}");
        assert!(err.contains("input 'X'"), "{datatype}: {err}");
    }
    let ints = parse(r#"{"inputs":[{"name":"X","shape":[2],"datatype":"INT64","data":[3.0,-9007199254740993]}]}"#).unwrap();
    assert_eq!(
        ints.inputs[0].data,
        TensorData::Int64(vec![3, -9007199254740993])
    );
    let words =
        parse(r#"{"inputs":[{"name":"S","shape":[2],"datatype":"BYTES","data":["hé","a\nb"]}]}"#)
            .unwrap();
    assert_eq!(
        words.inputs[0].data,
        TensorData::Bytes(vec!["hé".into(), "a\nb".into()])
    );
}

#[test]
fn missing_fields_and_bad_json_are_named() {
    let err = parse(r#"{"inputs":[{"name":"X","datatype":"FP32","data":[1]}]}"#).unwrap_err();
    assert!(err.contains("input 'X': missing \"shape\""), "{err}");
    let err = parse(r#"{"inputs":[{"shape":[1],"datatype":"FP32","data":[1]}]}"#).unwrap_err();
    assert!(err.contains("input #0: missing \"name\""), "{err}");
    let err = parse(r#"{"inputs":[{"name":"X","shape":[1],"datatype":"FLOAT","data":[1]}]}"#)
        .unwrap_err();
    assert!(err.contains("unknown datatype \"FLOAT\""), "{err}");
    let err = parse(r#"{"inputs":[{"name":"X","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#)
        .unwrap_err();
    assert!(err.contains("binary"), "{err}");
    let err = parse(r#"{"inputs": [{"name": "X""#).unwrap_err();
    assert!(err.starts_with("malformed JSON"), "{err}");
    let err = parse(r#"{"inputs": []} trailing"#).unwrap_err();
    assert!(err.starts_with("malformed JSON"), "{err}");
    let err = parse(r#"{"id": 5, "inputs": []}"#).unwrap_err();
    assert!(err.contains("\"id\" must be a string"), "{err}");
    let err = parse(r#"{"model": "x"}"#).unwrap_err();
    assert!(err.contains("no \"inputs\""), "{err}");
}

/// SplitMix64: reproducible test data without a dependency.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The 64-row churn request of the serving benchmark (64 x 78 FP32), or one like it.
pub(super) fn churn_64() -> Vec<u8> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Ok(body) = std::fs::read(root.join("bench/serve/infer-64.json")) {
        return body;
    }
    let text =
        std::fs::read_to_string(root.join("tests/fixtures/server/churn_expected.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows = expected["features"].as_array().unwrap();
    let data: Vec<&serde_json::Value> = rows
        .iter()
        .cycle()
        .take(64)
        .flat_map(|r| r.as_array().unwrap())
        .collect();
    serde_json::to_vec(&serde_json::json!({"inputs": [{"name": "features", "shape": [64, 78], "datatype": "FP32", "data": data}]})).unwrap()
}

/// Decoding speed of the 64-row churn request, old path against new. Run optimised:
/// `cargo test --release --lib server::parse::tests::decode_speed -- --ignored --nocapture`
#[test]
#[ignore = "a measurement: run it with --release --ignored --nocapture"]
fn decode_speed() {
    let body = churn_64();
    let numbers = 64 * 78;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let flat = v["inputs"][0]["data"].as_array().unwrap().clone();
    let rows: Vec<&[serde_json::Value]> = flat.chunks(78).collect();
    // Keys as clients usually send them, and sorted (data before datatype).
    let client_order = |data: String| {
        format!(
            r#"{{"inputs":[{{"name":"features","shape":[64,78],"datatype":"FP32","data":{data}}}]}}"#
        )
        .into_bytes()
    };
    let nested = client_order(serde_json::to_string(&rows).unwrap());
    let sorted = serde_json::to_vec(&serde_json::json!({"inputs": [{"name": "features",
        "shape": [64, 78], "datatype": "FP32", "data": flat}]}))
    .unwrap();
    let header = br#"{"inputs":[{"name":"features","shape":[64,78],"datatype":"FP32","parameters":{"binary_data_size":19968}}]}"#;
    let values: Vec<f32> = flat.iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let binary = [&header[..], &le_f32(&values)].concat();
    for body in [&body, &nested, &sorted] {
        assert_eq!(
            format!("{:?}", parse_infer(body, None, LIMIT)),
            format!("{:?}", parse_infer_general(body, None, LIMIT))
        );
    }
    let from_binary = parse_infer(&binary, Some(header.len()), LIMIT).unwrap();
    assert_eq!(
        format!("{:?}", from_binary.inputs),
        format!("{:?}", parse_infer(&body, None, LIMIT).unwrap().inputs)
    );
    let time = |f: &dyn Fn() -> usize| {
        let mut best = f64::MAX;
        for _ in 0..7 {
            let started = std::time::Instant::now();
            let mut sink = 0;
            let rounds = 400;
            for _ in 0..rounds {
                sink += f();
            }
            std::hint::black_box(sink);
            best = best.min(started.elapsed().as_secs_f64() / rounds as f64);
        }
        best
    };
    let len = |r: Result<InferRequest, String>| r.map_or(0, |r| r.inputs[0].data.len());
    println!("64-row churn request, {numbers} FP32 numbers");
    for (what, body) in [
        ("flat", &body),
        ("nested rows", &nested),
        ("sorted keys", &sorted),
    ] {
        let general = time(&|| len(parse_infer_general(std::hint::black_box(body), None, LIMIT)));
        let scan = time(&|| len(parse_infer(std::hint::black_box(body), None, LIMIT)));
        println!(
            "{what:>12} ({:5} bytes): general parser {:6.1} us/request {:5.2} ns/number | scan {:6.1} us/request {:5.2} ns/number | x{:.2}",
            body.len(),
            general * 1e6,
            general * 1e9 / numbers as f64,
            scan * 1e6,
            scan * 1e9 / numbers as f64,
            general / scan
        );
    }
    // One row, as the serving benchmark's 1-row requests send it.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Ok(one) = std::fs::read(root.join("bench/serve/infer-1.json")) {
        let scan = time(&|| len(parse_infer(std::hint::black_box(&one), None, LIMIT)));
        println!(
            "{:>12} ({:5} bytes): scan {:6.3} us/request",
            "one row",
            one.len(),
            scan * 1e6
        );
    }
    for (what, n) in [("ones", "1"), ("12.5s", "12.5"), ("1234567s", "1234567")] {
        let data = vec![n; numbers].join(",");
        let b = format!(r#"{{"inputs":[{{"name":"features","shape":[64,78],"datatype":"FP32","data":[{data}]}}]}}"#).into_bytes();
        let scan = time(&|| len(parse_infer(std::hint::black_box(&b), None, LIMIT)));
        println!(
            "{what:>12}: scan {:5.2} ns/number",
            scan * 1e9 / numbers as f64
        );
    }
    let decode = time(&|| {
        len(parse_infer(
            std::hint::black_box(&binary),
            Some(header.len()),
            LIMIT,
        ))
    });
    println!(
        "{:>12} ({:5} bytes): {:6.1} us/request {:5.2} ns/number",
        "binary",
        binary.len(),
        decode * 1e6,
        decode * 1e9 / numbers as f64
    );
}
