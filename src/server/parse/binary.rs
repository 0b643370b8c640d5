//! The binary tensor data extension: with an `Inference-Header-Content-Length`, the body is that
//! many bytes of JSON, then the raw data of the inputs that have `parameters.binary_data_size`,
//! in input order.

use crate::server::tensor::{DataType, TensorData};

pub(super) fn split_binary(
    body: &[u8],
    json_length: Option<usize>,
) -> Result<(&[u8], Option<&[u8]>), String> {
    let Some(length) = json_length else {
        return Ok((body, None));
    };
    match body.split_at_checked(length) {
        Some((json, binary)) => Ok((json, Some(binary))),
        None => Err(format!(
            "Inference-Header-Content-Length is {length}, but the whole body has only {} bytes",
            body.len()
        )),
    }
}

/// The binary part of a request, handed out to the binary inputs in order.
pub(super) struct BinaryPart<'a> {
    /// `None` without an `Inference-Header-Content-Length`.
    pub(super) bytes: Option<&'a [u8]>,
    pub(super) used: usize,
}

impl BinaryPart<'_> {
    /// The next `size` bytes, as the data of an input of `datatype` and `shape`.
    pub(super) fn take(
        &mut self,
        what: &dyn std::fmt::Display,
        size: u64,
        datatype: DataType,
        shape: &[usize],
    ) -> Result<TensorData, String> {
        let Some(bytes) = self.bytes else {
            return Err(format!(
                "{what}: \"parameters.binary_data_size\" is set, but the request has no binary \
                 part (send the Inference-Header-Content-Length header: the length of the JSON \
                 before the binary data)"
            ));
        };
        let count: usize = shape.iter().product();
        if let Some(width) = datatype.byte_size() {
            let need = count as u128 * width as u128;
            if u128::from(size) != need {
                return Err(format!(
                    "{what}: \"binary_data_size\" is {size} bytes, but shape {shape:?} of \
                     {datatype} takes {need} ({count} elements of {width} bytes)"
                ));
            }
        }
        let left = bytes.len().saturating_sub(self.used);
        let chunk = usize::try_from(size)
            .ok()
            .and_then(|size| bytes.get(self.used..self.used.checked_add(size)?))
            .ok_or_else(|| {
                format!(
                    "{what}: \"binary_data_size\" is {size} bytes, but only {left} bytes of \
                     binary data are left for it"
                )
            })?;
        self.used += chunk.len();
        TensorData::from_binary(datatype, chunk, count).map_err(|m| format!("{what}: {m}"))
    }

    pub(super) fn all_used(&self) -> Result<(), String> {
        match self.bytes {
            Some(bytes) if bytes.len() > self.used => Err(format!(
                "the binary part of the request has {} bytes, but its inputs' \
                 \"binary_data_size\" add up to {}",
                bytes.len(),
                self.used
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::server::parse::parse_infer;
    use crate::server::parse::tests::{LIMIT, le_f32, parse, parse_binary};
    use crate::server::tensor::TensorData;

    #[test]
    fn binary_inputs_take_their_bytes_in_order() {
        let json = r#"{"inputs":[{"name":"A","shape":[2,2],"datatype":"FP32","parameters":{"binary_data_size":16}},
            {"name":"J","shape":[2],"datatype":"INT64","data":[5,-6]},
            {"name":"S","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":13}},
            {"name":"B","shape":[3],"datatype":"BOOL","parameters":{"binary_data_size":3}},
            {"name":"H","shape":[1],"datatype":"FP16","parameters":{"binary_data_size":2}},
            {"name":"I","shape":[1],"datatype":"INT16","parameters":{"binary_data_size":2}}],
            "parameters":{"binary_data_output":true},
            "outputs":[{"name":"Y","parameters":{"binary_data":false}},{"name":"Z"}]}"#;
        let mut binary = le_f32(&[1.5, -0.0, 3.4028235e38, 1e-45]);
        binary.extend(2u32.to_le_bytes());
        binary.extend(b"hi");
        binary.extend(3u32.to_le_bytes());
        binary.extend("h\u{e9}".as_bytes());
        binary.extend([1, 0, 1]);
        binary.extend(half::f16::from_f32(0.5).to_bits().to_le_bytes());
        binary.extend((-2i16).to_le_bytes());
        let request = parse_binary(json, &binary).unwrap();
        let data: Vec<&TensorData> = request.inputs.iter().map(|t| &t.data).collect();
        assert_eq!(
            data,
            [
                &TensorData::Fp32(vec![1.5, -0.0, 3.4028235e38, 1e-45]),
                &TensorData::Int64(vec![5, -6]),
                &TensorData::Bytes(vec!["hi".into(), "h\u{e9}".into()]),
                &TensorData::Bool(vec![true, false, true]),
                &TensorData::Fp16(vec![half::f16::from_f32(0.5)]),
                &TensorData::Int16(vec![-2]),
            ]
        );
        assert_eq!(request.inputs[0].shape, vec![2, 2]);
        assert!(request.binary_output);
        assert_eq!(request.outputs, Some(vec!["Y".into(), "Z".into()]));
        assert_eq!(request.output_binary, vec![Some(false), None]);
        // The same JSON with nothing after it, as a plain JSON request, has no binary flags.
        let plain =
            parse(r#"{"inputs":[{"name":"J","shape":[1],"datatype":"INT8","data":[1]}]}"#).unwrap();
        assert!(!plain.binary_output && plain.output_binary.is_empty());
    }

    #[test]
    fn binary_sizes_are_checked_exactly() {
        let input = |size: &str, shape: &str, datatype: &str| {
            format!(
                r#"{{"inputs":[{{"name":"X","shape":{shape},"datatype":"{datatype}","parameters":{{"binary_data_size":{size}}}}}]}}"#
            )
        };
        let four = le_f32(&[1.0, 2.0, 3.0, 4.0]);
        for (json, binary, needles) in [
            (
                input("12", "[4]", "FP32"),
                &four[..],
                vec!["input 'X'", "binary_data_size\" is 12", "takes 16"],
            ),
            (
                input("16", "[4]", "FP32"),
                &four[..12],
                vec!["input 'X'", "only 12 bytes"],
            ),
            (
                input("8", "[2]", "FP32"),
                &four[..],
                vec!["16 bytes", "add up to 8"],
            ),
            (
                input("-1", "[4]", "FP32"),
                &four[..],
                vec!["input 'X'", "number of bytes, not -1"],
            ),
            (
                input("\"16\"", "[4]", "FP32"),
                &four[..],
                vec!["input 'X'", "not \"16\""],
            ),
            (
                input("3", "[3]", "BOOL"),
                &[1, 2, 0][..],
                vec!["input 'X'", "element 1", "BOOL"],
            ),
            (
                input("6", "[2]", "BYTES"),
                &[1, 0, 0, 0, b'a', 9][..],
                vec!["input 'X'", "element 1"],
            ),
            (
                input("7", "[1]", "BYTES"),
                &[1, 0, 0, 0, b'a', 9, 9][..],
                vec!["input 'X'", "2 bytes after"],
            ),
            (
                input("6", "[1]", "BYTES"),
                &[2, 0, 0, 0, 0xff, 0xfe][..],
                vec!["input 'X'", "UTF-8"],
            ),
            (
                input("8", "[1]", "BYTES"),
                &[9, 0, 0, 0, 1, 2, 3, 4][..],
                vec!["input 'X'", "says 9 bytes"],
            ),
        ] {
            let err = parse_binary(&json, binary).unwrap_err();
            for needle in needles {
                assert!(err.contains(needle), "{json}: {err:?} lacks {needle:?}");
            }
        }
        let json = input("16", "[4]", "FP32");
        let err = parse_infer(json.as_bytes(), Some(json.len() + 1), LIMIT).unwrap_err();
        assert!(err.contains("Inference-Header-Content-Length is"), "{err}");
        let err = parse(&json).unwrap_err();
        assert!(err.contains("Inference-Header-Content-Length"), "{err}");
        let both = r#"{"inputs":[{"name":"X","shape":[1],"datatype":"FP32","data":[1],"parameters":{"binary_data_size":4}}]}"#;
        let err = parse_binary(both, &le_f32(&[1.0])).unwrap_err();
        assert!(err.contains("both"), "{err}");
        // A header length that covers the whole body: a JSON request.
        let json = r#"{"inputs":[{"name":"X","shape":[1],"datatype":"FP32","data":[1]}]}"#;
        parse_binary(json, &[]).unwrap();
        let err = parse_binary(json, &[0]).unwrap_err();
        assert!(err.contains("add up to 0"), "{err}");
        for (json, needle) in [
            (
                r#"{"inputs":[],"parameters":{"binary_data_output":1}}"#,
                "binary_data_output\" must be true or false, not 1",
            ),
            (
                r#"{"inputs":[],"outputs":[{"name":"Y","parameters":{"binary_data":"yes"}}]}"#,
                "output 'Y'",
            ),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
        // Parameters that are not objects are ignored, as they always were.
        let odd =
            parse(r#"{"inputs":[],"parameters":[1],"outputs":[{"name":"Y","parameters":5}]}"#)
                .unwrap();
        assert!(!odd.binary_output);
        assert_eq!(odd.output_binary, vec![None]);
    }
}
