//! Tensor data of the Open Inference Protocol's JSON encoding, parsed straight into f32: the
//! server reads request tensors with it and the remote tier reads answers with it.

use serde::Deserialize;

/// Most values one tensor may carry; a larger one is refused while it is parsed.
pub const MAX_TENSOR_VALUES: usize = 1 << 20;

/// Tensor values flattened to f32 as they are parsed (no intermediate JSON tree): nested or flat
/// arrays of numbers and booleans; `null` is a missing value.
#[derive(Debug, Default)]
pub struct TensorData(pub Vec<f32>);

impl<'de> Deserialize<'de> for TensorData {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = Vec::new();
        d.deserialize_any(Flatten(&mut out))?;
        Ok(TensorData(out))
    }
}

/// Appends every number of a (possibly nested) JSON array to the vector.
struct Flatten<'a>(&'a mut Vec<f32>);

impl<'de> serde::de::DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("numbers, booleans or null, in (nested) arrays")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(&mut *self.0))?.is_some() {
            if self.0.len() > MAX_TENSOR_VALUES {
                return Err(serde::de::Error::custom(format!(
                    "more than {MAX_TENSOR_VALUES} values in one tensor"
                )));
            }
        }
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.push(if v { 1.0 } else { 0.0 });
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.push(f32::NAN);
        Ok(())
    }
}
