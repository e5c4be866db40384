//! Tensor dtypes of model files: f32 (training checkpoints) and the half-precision formats
//! checkpoints are exchanged in, bf16 and f16 (`vffn export --dtype`).
//!
//! Every tensor of a model file may be stored in any of the three, independently of the others;
//! loading widens to f32 with `half`'s slice conversions (exact: every bf16 and f16 value is an
//! f32). Writing narrows with round-to-nearest-even. A half-precision tensor holding NaN or an
//! infinity is refused, naming the tensor, both when read and when a value would become one on
//! writing (an f32 above the format's largest finite value).

use std::fmt;
use std::str::FromStr;

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};
use safetensors::tensor::Dtype;
use thiserror::Error;

/// A tensor that cannot be converted, named; checkpoint loading turns it into the
/// `CheckpointError` variant of the same name and message.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DtypeError {
    /// Stored in a dtype a model file may not use.
    #[error("tensor `{name}`: dtype {found}, expected F32, BF16 or F16")]
    WrongDtype { name: String, found: String },
    /// A half-precision value that is (or would round to) NaN or an infinity.
    #[error("tensor `{name}`: value {value} at index {index} is not finite")]
    NonFinite { name: String, index: usize, value: f32 },
}

/// The storage dtype of a model file's tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum WeightDtype {
    #[default]
    F32,
    Bf16,
    F16,
}

impl WeightDtype {
    /// Every dtype, as named on the command line.
    pub const ALL: [WeightDtype; 3] = [WeightDtype::F32, WeightDtype::Bf16, WeightDtype::F16];

    /// Name as accepted by [`FromStr`] (`f32`, `bf16`, `f16`).
    pub const fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::Bf16 => "bf16",
            WeightDtype::F16 => "f16",
        }
    }

    /// Bytes of one stored value.
    pub const fn size(self) -> usize {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::Bf16 | WeightDtype::F16 => 2,
        }
    }

    /// The safetensors dtype tag.
    pub(crate) const fn safetensors(self) -> Dtype {
        match self {
            WeightDtype::F32 => Dtype::F32,
            WeightDtype::Bf16 => Dtype::BF16,
            WeightDtype::F16 => Dtype::F16,
        }
    }

    /// The dtype of a safetensors tag, if it is one a model file may use.
    pub(crate) fn from_safetensors(dtype: Dtype) -> Option<WeightDtype> {
        WeightDtype::ALL.into_iter().find(|d| d.safetensors() == dtype)
    }
}

impl fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WeightDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        WeightDtype::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown dtype `{s}` (expected f32, bf16 or f16)"))
    }
}

/// Little-endian 16-bit words of `bytes` (whose length is even).
fn words(bytes: &[u8]) -> Vec<u16> {
    bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect()
}

/// Refuses a half-precision tensor with a NaN or an infinity.
fn check_finite(name: &str, _dtype: WeightDtype, values: &[f32]) -> Result<(), DtypeError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => {
            Err(DtypeError::NonFinite { name: name.to_string(), index, value: values[index] })
        }
        None => Ok(()),
    }
}

/// One stored tensor's little-endian bytes widened to f32 (exact). `name` is for errors.
pub(crate) fn decode(name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>, DtypeError> {
    let Some(kind) = WeightDtype::from_safetensors(dtype) else {
        return Err(DtypeError::WrongDtype { name: name.to_string(), found: format!("{dtype:?}") });
    };
    let mut out = vec![0.0f32; bytes.len() / kind.size()];
    match kind {
        WeightDtype::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            return Ok(out);
        }
        WeightDtype::Bf16 => words(bytes).reinterpret_cast::<bf16>().convert_to_f32_slice(&mut out),
        WeightDtype::F16 => words(bytes).reinterpret_cast::<f16>().convert_to_f32_slice(&mut out),
    }
    check_finite(name, kind, &out)?;
    Ok(out)
}

/// f32 values narrowed to `dtype` (round-to-nearest-even) as little-endian bytes. A value that
/// is, or rounds to, NaN or an infinity in a half-precision dtype is refused naming `name`.
pub(crate) fn encode(name: &str, data: &[f32], dtype: WeightDtype) -> Result<Vec<u8>, DtypeError> {
    let mut bits = vec![0u16; data.len()];
    match dtype {
        WeightDtype::F32 => return Ok(data.iter().flat_map(|x| x.to_le_bytes()).collect()),
        WeightDtype::Bf16 => {
            let narrowed = bits.reinterpret_cast_mut::<bf16>();
            narrowed.convert_from_f32_slice(data);
            check_finite(name, dtype, &narrowed.to_f32_vec())?;
        }
        WeightDtype::F16 => {
            let narrowed = bits.reinterpret_cast_mut::<f16>();
            narrowed.convert_from_f32_slice(data);
            check_finite(name, dtype, &narrowed.to_f32_vec())?;
        }
    }
    Ok(bits.iter().flat_map(|w| w.to_le_bytes()).collect())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// bf16 round-to-nearest-even written out on the bits (finite inputs), independent of `half`.
    fn bf16_rne(x: f32) -> f32 {
        let b = x.to_bits();
        let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000;
        f32::from_bits(rounded)
    }

    fn round_trip(data: &[f32], dtype: WeightDtype) -> Vec<f32> {
        let bytes = encode("t", data, dtype).unwrap();
        assert_eq!(bytes.len(), data.len() * dtype.size());
        decode("t", dtype.safetensors(), &bytes).unwrap()
    }

    /// The first value whose round trip through `dtype` is not `want(x)` bit for bit, as
    /// (x, bits read back, bits wanted); None when every value comes back as wanted.
    fn first_miss(
        data: &[f32],
        dtype: WeightDtype,
        want: fn(f32) -> f32,
    ) -> Option<(f32, u32, u32)> {
        let back = round_trip(data, dtype);
        let mut pairs = data.iter().zip(&back).map(|(&x, y)| (x, y.to_bits(), want(x).to_bits()));
        pairs.find(|&(_, got, wanted)| got != wanted)
    }

    proptest! {
        #[test]
        fn bf16_round_trip_is_the_nearest_even_rounding(
            data in prop::collection::vec(-1e30f32..1e30, 0..64),
        ) {
            prop_assert_eq!(first_miss(&data, WeightDtype::Bf16, |x| bf16::from_f32(x).to_f32()), None);
            prop_assert_eq!(first_miss(&data, WeightDtype::Bf16, bf16_rne), None);
        }

        #[test]
        fn f16_round_trip_is_the_nearest_even_rounding(
            data in prop::collection::vec(-6e4f32..6e4, 0..64),
        ) {
            prop_assert_eq!(first_miss(&data, WeightDtype::F16, |x| f16::from_f32(x).to_f32()), None);
        }

        #[test]
        fn f32_round_trip_is_bit_exact(data in prop::collection::vec(any::<f32>(), 0..64)) {
            prop_assert_eq!(first_miss(&data, WeightDtype::F32, |x| x), None);
        }
    }

    #[test]
    fn ties_round_to_even() {
        // 1 + 2^-8 lies halfway between the bf16 neighbours 1 and 1 + 2^-7: even is 1.
        let halfway = f32::from_bits(0x3F80_8000);
        assert_eq!(round_trip(&[halfway], WeightDtype::Bf16), vec![1.0]);
        // Just above halfway rounds up.
        let above = f32::from_bits(0x3F80_8001);
        assert_eq!(round_trip(&[above], WeightDtype::Bf16), vec![f32::from_bits(0x3F81_0000)]);
    }

    #[test]
    fn non_finite_half_values_are_refused_with_the_tensor_name() {
        let inf_bf16 = bf16::INFINITY.to_bits().to_le_bytes();
        let nan_f16 = f16::NAN.to_bits().to_le_bytes();
        for (dtype, bytes) in [(Dtype::BF16, inf_bf16), (Dtype::F16, nan_f16)] {
            let err = decode("blocks.0.ff_out.weight", dtype, &[0, 0, bytes[0], bytes[1]]);
            match err {
                Err(DtypeError::NonFinite { name, index, .. }) => {
                    assert_eq!((name.as_str(), index), ("blocks.0.ff_out.weight", 1));
                }
                other => panic!("{dtype:?}: expected NonFinite, got {other:?}"),
            }
        }
        // Out of f16 range (and f32::MAX, which bf16 rounds up to infinity) on writing.
        let err = encode("w", &[1.0, 7e4], WeightDtype::F16).unwrap_err();
        assert!(err.to_string().contains("`w`"), "{err}");
        assert!(encode("w", &[f32::MAX], WeightDtype::Bf16).is_err());
        assert!(encode("w", &[f32::NAN], WeightDtype::Bf16).is_err());
        // f32 files keep what they hold.
        assert!(encode("w", &[f32::INFINITY], WeightDtype::F32).is_ok());
    }

    #[test]
    fn names_parse_and_other_dtypes_are_refused() {
        for d in WeightDtype::ALL {
            assert_eq!(d.name().parse::<WeightDtype>(), Ok(d));
        }
        assert!("f64".parse::<WeightDtype>().is_err());
        let err = decode("x", Dtype::F64, &[0; 8]).unwrap_err();
        assert!(matches!(err, DtypeError::WrongDtype { .. }), "{err}");
    }
}
