//! The MPI ranks of a burn-train run: each runs its equal share of every batch's rows, sends
//! its merged output to rank 0 (which alone feeds the metrics, renders, writes checkpoints and
//! decides early stopping), and every rank learns rank 0's decision to stop after each batch.

use super::StepOutput;
use super::participants::Participants;
use crate::dist::RankPeers;
use crate::{DataParallelError, Result, Scatter};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, TensorData};

/// What rank 0 broadcasts after each batch.
const GO_ON: u64 = 0;
const STOP: u64 = 1;
const FAILED: u64 = 2;
/// Sent in place of its output by a rank whose batch failed (no encoded output is one byte).
const FAILED_MARK: u8 = 0xff;

impl Participants for RankPeers {
    fn part_of<B: Backend, I: Scatter<B>>(
        &self,
        batch: I,
        device: &B::Device,
    ) -> Result<Option<I>> {
        let (rank, size) = (self.comm.rank(), self.comm.size());
        crate::train::part_of(batch, 0, rank, size, std::slice::from_ref(device))
    }

    fn leads(&self) -> bool {
        self.comm.rank() == 0
    }

    fn end_batch<B: Backend, T: StepOutput<B>>(
        &self,
        local: Result<Option<(T, f64)>>,
        device: &B::Device,
        stop: bool,
        step: usize,
    ) -> Result<(Option<T>, bool)> {
        let comm = self.comm.as_ref();
        let output = std::any::type_name::<T>();
        let cannot = |rank| DataParallelError::OutputCannotTravel { rank, output };
        // What this rank sends: its output's bytes, nothing (no rows), or a failure marker.
        let sent = local.and_then(|local| match local {
            None => Ok(Vec::new()),
            Some((output, weight)) => output
                .into_data()
                .and_then(|data| encode(weight, &data))
                .ok_or_else(|| cannot(comm.rank())),
        });
        let bytes = sent
            .as_ref()
            .map_or_else(|_| vec![FAILED_MARK], Clone::clone);
        let all = comm.gather_bytes_to_0(bytes);
        let mut verdict = [if stop { STOP } else { GO_ON }];
        let merged = (comm.rank() == 0).then(|| merge::<B, T>(all, device, step));
        if matches!(merged, Some(Err(_))) {
            verdict[0] = FAILED;
        }
        comm.broadcast_u64_from(0, &mut verdict);
        // A rank that failed reports its own error; the others learn of the failure.
        sent?;
        match (merged, verdict[0]) {
            (Some(merged), verdict) => Ok((merged?, verdict == STOP)),
            (None, FAILED) => Err(DataParallelError::PeerFailed {
                rank: 0,
                step,
                reason: "a rank could not send its step outputs to rank 0".into(),
            }),
            (None, verdict) => Ok((None, verdict == STOP)),
        }
    }

    fn stop_after_epoch(&self, stop: bool) -> bool {
        let mut verdict = [u64::from(stop)];
        self.comm.broadcast_u64_from(0, &mut verdict);
        verdict[0] != 0
    }
}

/// Every rank's output merged, on rank 0; an error naming the first rank that failed or sent
/// none it could read.
fn merge<B: Backend, T: StepOutput<B>>(
    all: Vec<Vec<u8>>,
    device: &B::Device,
    step: usize,
) -> Result<Option<T>> {
    let output = std::any::type_name::<T>();
    let mut parts = Vec::new();
    for (rank, bytes) in all.into_iter().enumerate() {
        if bytes.is_empty() {
            continue;
        }
        if bytes == [FAILED_MARK] {
            return Err(DataParallelError::PeerFailed {
                rank,
                step,
                reason: "its batch failed (see its own error)".into(),
            });
        }
        let cannot = DataParallelError::OutputCannotTravel { rank, output };
        let (weight, data) = decode(&bytes).ok_or(cannot)?;
        let cannot = DataParallelError::OutputCannotTravel { rank, output };
        parts.push((T::from_data(data, device).ok_or(cannot)?, weight));
    }
    Ok((!parts.is_empty()).then(|| T::merge(parts, device)))
}

/// `weight`, then each tensor as its kind (0 float as f32, 1 int as i64, 2 bool as u8), rank,
/// dims and values, little-endian; `None` where a tensor's values cannot be read as such.
fn encode(weight: f64, data: &[TensorData]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let word = |out: &mut Vec<u8>, value: u64| out.extend_from_slice(&value.to_le_bytes());
    word(&mut out, weight.to_bits());
    word(&mut out, data.len() as u64);
    for tensor in data {
        let dims: Vec<usize> = tensor.shape.iter().copied().collect();
        let (kind, values): (u64, Vec<u8>) = if tensor.dtype.is_float() {
            let values = tensor.clone().convert::<f32>().to_vec::<f32>().ok()?;
            (0, values.iter().flat_map(|v| v.to_le_bytes()).collect())
        } else if matches!(tensor.dtype, DType::Bool(_)) {
            (2, bools(tensor)?)
        } else {
            let values = tensor.clone().convert::<i64>().to_vec::<i64>().ok()?;
            (1, values.iter().flat_map(|v| v.to_le_bytes()).collect())
        };
        word(&mut out, kind);
        word(&mut out, dims.len() as u64);
        for dim in dims {
            word(&mut out, dim as u64);
        }
        word(&mut out, values.len() as u64);
        out.extend_from_slice(&values);
    }
    Some(out)
}

/// A bool tensor's values as 0 and 1, however the backend stores them (`bool`, or bytes and
/// words on the GPU backends).
fn bools(tensor: &TensorData) -> Option<Vec<u8>> {
    if let Ok(values) = tensor.clone().to_vec::<bool>() {
        return Some(values.into_iter().map(u8::from).collect());
    }
    if let Ok(values) = tensor.clone().to_vec::<u8>() {
        return Some(values.into_iter().map(|v| u8::from(v != 0)).collect());
    }
    let values = tensor.clone().to_vec::<u32>().ok()?;
    Some(values.into_iter().map(|v| u8::from(v != 0)).collect())
}

/// What [`encode`] wrote; `None` if it is not that.
fn decode(bytes: &[u8]) -> Option<(f64, Vec<TensorData>)> {
    let mut at: usize = 0;
    let mut take = |n: usize| {
        let slice = bytes.get(at..at.checked_add(n)?)?;
        at += n;
        Some(slice)
    };
    fn word<'a>(take: &mut dyn FnMut(usize) -> Option<&'a [u8]>) -> Option<u64> {
        Some(u64::from_le_bytes(take(8)?.try_into().ok()?))
    }
    let weight = f64::from_bits(word(&mut take)?);
    let count = usize::try_from(word(&mut take)?).ok()?;
    let mut data = Vec::new();
    for _ in 0..count {
        let kind = word(&mut take)?;
        let rank = usize::try_from(word(&mut take)?).ok()?;
        let mut dims = Vec::new();
        for _ in 0..rank {
            dims.push(usize::try_from(word(&mut take)?).ok()?);
        }
        let len = usize::try_from(word(&mut take)?).ok()?;
        let values = take(len)?;
        let elements = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
        let width = match kind {
            0 => 4,
            1 => 8,
            2 => 1,
            _ => return None,
        };
        // Checked here: `TensorData::new` panics on a length that does not fit the shape.
        if elements.checked_mul(width)? != len {
            return None;
        }
        data.push(match kind {
            0 => TensorData::new(
                values
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect::<Vec<f32>>(),
                dims,
            ),
            1 => TensorData::new(
                values
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect::<Vec<i64>>(),
                dims,
            ),
            _ => TensorData::new(values.iter().map(|&v| v != 0).collect::<Vec<bool>>(), dims),
        });
    }
    Some((weight, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_of_every_kind_make_the_round_trip() {
        let data = vec![
            TensorData::new(vec![1.5f32, -2.0, 3.25, 0.0], [2, 2]),
            TensorData::new(vec![3i64, -7], [2]),
            TensorData::new(vec![true, false, true], [3, 1]),
        ];
        let bytes = encode(7.5, &data).unwrap();
        let (weight, back) = decode(&bytes).unwrap();
        assert_eq!(weight, 7.5);
        assert_eq!(back.len(), 3);
        for (a, b) in data.iter().zip(&back) {
            assert_eq!(a.shape, b.shape);
        }
        back[0].assert_eq(&data[0], true);
        back[1].assert_eq(&data[1], true);
        back[2].assert_eq(&data[2], true);
        // Cut short, or a length that does not fit its shape: refused, not a panic.
        assert!(decode(&bytes[..20]).is_none());
        let mut lying = bytes.clone();
        let dims_at = 8 * 4; // weight, count, kind, rank
        lying[dims_at..dims_at + 8].copy_from_slice(&3u64.to_le_bytes());
        assert!(decode(&lying).is_none());
    }
}
