//! The safetensors files themselves: writing tensors (f32, bf16 or mixed) with a checksum of
//! each tensor and of the metadata, and reading them back verified and decoded.

use super::*;

/// A borrowed tensor to write: name, row-major shape and values.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub data: &'a [f32],
}

/// An owned tensor read back.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorData {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Tensors by name plus the string metadata of one safetensors file.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TensorFile {
    pub tensors: BTreeMap<String, TensorData>,
    pub metadata: BTreeMap<String, String>,
}

/// A tensor as safetensors sees it: little-endian bytes of its dtype.
pub(super) struct EncodedView<'a> {
    pub(super) dtype: WeightDtype,
    pub(super) shape: &'a [usize],
    pub(super) bytes: Vec<u8>,
}

impl View for EncodedView<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype.safetensors()
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Serializes f32 tensors and string metadata to safetensors bytes.
pub fn write_tensors(
    tensors: &[TensorRef<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, CheckpointError> {
    write_tensors_as(tensors, metadata, WeightDtype::F32)
}

/// [`write_tensors`] storing every tensor as `dtype` (see [`crate::dtype`]).
pub fn write_tensors_as(
    tensors: &[TensorRef<'_>],
    metadata: &BTreeMap<String, String>,
    dtype: WeightDtype,
) -> Result<Vec<u8>, CheckpointError> {
    write_tensors_mixed(tensors, &vec![dtype; tensors.len()], metadata)
}

/// [`write_tensors`] storing tensor i as `dtypes[i]` (a file of mixed dtypes, checksummed).
pub fn write_tensors_mixed(
    tensors: &[TensorRef<'_>],
    dtypes: &[WeightDtype],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, CheckpointError> {
    assert_eq!(tensors.len(), dtypes.len(), "one dtype per tensor");
    let mut seen = std::collections::BTreeSet::new();
    let mut views = Vec::with_capacity(tensors.len());
    for (tensor, &dtype) in tensors.iter().zip(dtypes) {
        if !seen.insert(tensor.name) {
            return Err(CheckpointError::DuplicateTensor { name: tensor.name.to_string() });
        }
        let numel = tensor.shape.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n));
        if numel != Some(tensor.data.len()) {
            return Err(CheckpointError::DataLength {
                name: tensor.name.to_string(),
                shape: tensor.shape.to_vec(),
                len: tensor.data.len(),
            });
        }
        let bytes = crate::dtype::encode(tensor.name, tensor.data, dtype)?;
        views.push((tensor.name, EncodedView { dtype, shape: tensor.shape, bytes }));
    }
    if metadata.contains_key(CHECKSUMS_KEY) {
        return Err(CheckpointError::InvalidMetadata {
            key: CHECKSUMS_KEY.into(),
            message: "reserved key given as metadata".into(),
        });
    }
    // The checksums cover the bytes as stored (in the stored dtype).
    let mut checksums =
        BTreeMap::from([(METADATA_CHECKSUM.to_string(), metadata_checksum(metadata))]);
    for (name, view) in &views {
        let sum = tensor_checksum(view.dtype.safetensors(), view.shape, &view.bytes);
        checksums.insert(name.to_string(), sum);
    }
    let mut info: std::collections::HashMap<String, String> =
        metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    info.insert(CHECKSUMS_KEY.into(), serde_json::to_string(&checksums).expect("map of strings"));
    let mut bytes = safetensors::serialize(views, Some(info))?;
    canonicalize_header(&mut bytes);
    Ok(bytes)
}

/// A 64-bit content hash. Each 8-byte word goes through a step that is a bijection of the state
/// for a fixed word and injective in the word for a fixed state, so a change confined to one
/// word (any single flipped bit) always changes the result; the length is mixed in last.
pub(super) fn hash_bytes(state: u64, bytes: &[u8]) -> u64 {
    const ODD: u64 = 0x9E37_79B9_7F4A_7C15;
    let step = |state: u64, word: u64| (state ^ word).wrapping_mul(ODD).rotate_left(29);
    let mut words = bytes.chunks_exact(8);
    let mut state = (&mut words)
        .fold(state, |s, w| step(s, u64::from_le_bytes(w.try_into().expect("chunks of 8"))));
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    state = step(state, u64::from_le_bytes(tail));
    step(state, bytes.len() as u64)
}

/// Checksum of one tensor: dtype, shape and raw bytes, as 16 hex digits.
pub(super) fn tensor_checksum(dtype: Dtype, shape: &[usize], bytes: &[u8]) -> String {
    let mut state = hash_bytes(0x7666_666E, format!("{dtype:?}").as_bytes());
    for &dim in shape {
        state = hash_bytes(state, &(dim as u64).to_le_bytes());
    }
    format!("{:016x}", hash_bytes(state, bytes))
}

/// Checksum of the metadata (keys and values in key order), as 16 hex digits.
pub(super) fn metadata_checksum(metadata: &BTreeMap<String, String>) -> String {
    let state = metadata.iter().fold(0x6D65_7461, |state, (key, value)| {
        hash_bytes(hash_bytes(state, key.as_bytes()), value.as_bytes())
    });
    format!("{state:016x}")
}

/// Checks a file's header is exactly as [`write_tensors`] wrote it (canonical JSON padded with
/// spaces) and every tensor and the other `metadata` match their entry in `checksums_json`.
pub(super) fn verify_checksums(
    bytes: &[u8],
    file: &SafeTensors<'_>,
    metadata: &BTreeMap<String, String>,
    checksums_json: &str,
) -> Result<(), CheckpointError> {
    let header_error = |what: &str| CheckpointError::Header(what.to_string());
    let checksums: BTreeMap<String, String> = serde_json::from_str(checksums_json)
        .map_err(|_| header_error("metadata `checksums` is not a JSON object of strings"))?;
    let region = bytes
        .get(..8)
        .and_then(|b| usize::try_from(u64::from_le_bytes(b.try_into().ok()?)).ok())
        .and_then(|len| bytes.get(8..8usize.checked_add(len)?))
        .ok_or_else(|| header_error("unreadable length"))?;
    let written = &region[..region.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1)];
    if canonical_header(region).as_deref().map(str::as_bytes) != Some(written) {
        return Err(header_error("not in the form vffn writes"));
    }
    if checksums.get(METADATA_CHECKSUM) != Some(&metadata_checksum(metadata)) {
        return Err(header_error("metadata does not match its checksum"));
    }
    if checksums.len() != file.len() + 1 {
        return Err(header_error("the checksums list other tensors than the file holds"));
    }
    for (name, view) in file.iter() {
        if checksums.get(name) != Some(&tensor_checksum(view.dtype(), view.shape(), view.data())) {
            return Err(CheckpointError::Checksum { name: name.to_string() });
        }
    }
    Ok(())
}

/// The first non-finite value of a tensor, as an error naming it.
pub(super) fn check_finite(name: &str, data: &[f32]) -> Result<(), CheckpointError> {
    match data.iter().position(|x| !x.is_finite()) {
        Some(index) => {
            Err(CheckpointError::NonFinite { name: name.to_string(), index, value: data[index] })
        }
        None => Ok(()),
    }
}

/// Rewrites the JSON header with its keys sorted: safetensors keeps the metadata in a HashMap,
/// so without this the same checkpoint would serialize to different bytes from run to run.
/// The sorted header has the same length (same entries, reordered); if it somehow does not
/// fit, the original (valid, merely unordered) header is kept.
pub(super) fn canonicalize_header(bytes: &mut [u8]) {
    let Some(len) = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    else {
        return;
    };
    let Some(region) = usize::try_from(len).ok().and_then(|n| bytes.get_mut(8..8 + n)) else {
        return;
    };
    let Some(text) = canonical_header(region) else { return };
    if text.len() <= region.len() {
        region[..text.len()].copy_from_slice(text.as_bytes());
        region[text.len()..].fill(b' ');
    }
}

/// The header JSON with its keys sorted and `__metadata__` first, or None if it does not parse.
pub(super) fn canonical_header(region: &[u8]) -> Option<String> {
    type Header = BTreeMap<String, serde_json::Value>;
    let mut header = serde_json::from_slice::<Header>(region).ok()?;
    let metadata = header
        .remove("__metadata__")
        .and_then(|m| serde_json::from_value::<BTreeMap<String, String>>(m).ok());
    let tensors = serde_json::to_string(&header).ok()?;
    let tensors = &tensors[1..tensors.len() - 1];
    Some(match metadata {
        None => format!("{{{tensors}}}"),
        Some(metadata) => {
            let metadata = serde_json::to_string(&metadata).ok()?;
            let separator = if tensors.is_empty() { "" } else { "," };
            format!("{{\"__metadata__\":{metadata}{separator}{tensors}}}")
        }
    })
}

/// Parses safetensors bytes holding f32, bf16 or f16 tensors (any mix), widened to f32;
/// checksums are verified when present.
pub fn read_tensors(bytes: &[u8]) -> Result<TensorFile, CheckpointError> {
    read_tensors_checked(bytes, false)
}

/// [`read_tensors`], with the checksums required when `require_checksums`.
pub(super) fn read_tensors_checked(
    bytes: &[u8],
    require_checksums: bool,
) -> Result<TensorFile, CheckpointError> {
    let file = SafeTensors::deserialize(bytes)?;
    let (_, header) = SafeTensors::read_metadata(bytes)?;
    let mut metadata: BTreeMap<String, String> = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    match metadata.remove(CHECKSUMS_KEY) {
        Some(checksums) => verify_checksums(bytes, &file, &metadata, &checksums)?,
        None if require_checksums => {
            return Err(CheckpointError::MissingMetadata { key: CHECKSUMS_KEY.into() })
        }
        None => {}
    }
    let mut tensors = BTreeMap::new();
    for (name, view) in file.iter() {
        let data = crate::dtype::decode(name, view.dtype(), view.data())?;
        tensors.insert(name.to_string(), TensorData { shape: view.shape().to_vec(), data });
    }
    Ok(TensorFile { tensors, metadata })
}
