//! KServe v1 `predict` bodies (`{"instances": [...]}`): the general reader's part, and the checks
//! that make the instances one tensor whose first dimension is their number.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Error as _, IgnoredAny, MapAccess, Visitor};

use super::elements::ParsedData;
use super::general::{DataSeed, json_error};
use crate::server::tensor::{DataType, TensorData};

pub(super) fn general_instances(
    body: &[u8],
    datatype: DataType,
    max_elements: usize,
) -> Result<Option<ParsedData>, String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = InstancesSeed {
        datatype,
        max_elements,
    }
    .deserialize(&mut de)
    .map_err(json_error)?;
    de.end().map_err(json_error)?;
    Ok(parsed)
}

pub(super) fn finish_instances(
    parsed: Option<ParsedData>,
    datatype: DataType,
) -> Result<(Vec<usize>, TensorData), String> {
    let data = parsed.ok_or_else(|| "the request has no \"instances\"".to_string())?;
    let ParsedData {
        values,
        dims,
        error,
    } = data;
    if let Some(error) = error {
        return Err(format!(
            "instances: {}",
            error.replace("\"data\"", "\"instances\"")
        ));
    }
    let values = values.into_typed(datatype, &"instances")?;
    match dims.first() {
        None => return Err("\"instances\" must be an array with one entry per row".into()),
        Some(0) => return Err("\"instances\" is empty; send at least one instance".into()),
        Some(_) => {}
    }
    Ok((dims, values))
}

struct InstancesSeed {
    datatype: DataType,
    max_elements: usize,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum InstancesField {
    Instances,
    Inputs,
    #[serde(other)]
    Other,
}

impl<'de> DeserializeSeed<'de> for InstancesSeed {
    type Value = Option<ParsedData>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<ParsedData>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for InstancesSeed {
    type Value = Option<ParsedData>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with \"instances\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<ParsedData>, A::Error> {
        let mut data = None;
        while let Some(field) = map.next_key::<InstancesField>()? {
            match field {
                InstancesField::Instances => {
                    data = Some(map.next_value_seed(DataSeed {
                        datatype: Some(self.datatype),
                        capacity: 0,
                        max_elements: self.max_elements,
                    })?)
                }
                InstancesField::Inputs => {
                    return Err(A::Error::custom(
                        "the columnar \"inputs\" form of v1 predict is not supported; send \"instances\"",
                    ));
                }
                InstancesField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use crate::server::parse::tests::{LIMIT, instances};
    use crate::server::tensor::{DataType, TensorData};

    #[test]
    fn instances_become_rows() {
        let (dims, data) = instances(
            br#"{"instances": [[1, 2], [3, 4], [5, 6]]}"#,
            DataType::Fp32,
            LIMIT,
        )
        .unwrap();
        assert_eq!(dims, vec![3, 2]);
        assert_eq!(data, TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let (dims, _) = instances(br#"{"instances": [1, 2]}"#, DataType::Int64, LIMIT).unwrap();
        assert_eq!(dims, vec![2]);
        let err = instances(br#"{"instances": [[1], [2, 3]]}"#, DataType::Fp32, LIMIT).unwrap_err();
        assert!(err.contains("ragged"), "{err}");
        let err = instances(br#"{"rows": []}"#, DataType::Fp32, LIMIT).unwrap_err();
        assert!(err.contains("no \"instances\""), "{err}");
        let err = instances(br#"{"instances": 5}"#, DataType::Fp32, LIMIT).unwrap_err();
        assert!(err.contains("must be an array"), "{err}");
    }
}
