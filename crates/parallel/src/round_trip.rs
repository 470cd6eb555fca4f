//! A check, once per pair of distinct devices, that tensors really move between them.
//!
//! On some backends Burn 0.21 has no device-to-device copy (wgpu and ROCm: fixed in Burn 0.22).
//! There `to_device` panics on a device thread, and the caller gets a tensor that reports the
//! right device but cannot be read, or that kernels read as wrong numbers without an error.
//! Data parallelism moves every part of every batch, so before a device is first used a few
//! values go there, are computed on, and come back; anything but the exact result is an error.

use crate::{DataParallelError, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::Duration;

/// How long a round trip may take before the device is reported as not answering (a broken
/// copy can leave a read waiting forever).
const PATIENCE: Duration = Duration::from_secs(60);

/// Values exactly representable, and computed on exactly, in every float type Burn supports.
const SENT: [f32; 6] = [0.5, -1.25, 3.0, 0.25, -7.5, 42.0];

/// Checks that a tensor goes from `from` to `to`, is computed on there, and comes back intact.
pub(crate) fn check<B: Backend>(from: &B::Device, to: &B::Device) -> Result<()> {
    if from == to {
        return Ok(());
    }
    let (source, target) = (from.clone(), to.clone());
    check_with::<B>(from, to, PATIENCE, move || trip::<B>(&source, &target))
}

/// Runs `trip` on a thread of its own, so that a panic or a hang is reported rather than
/// suffered.
fn check_with<B: Backend>(
    from: &B::Device,
    to: &B::Device,
    patience: Duration,
    trip: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Result<()> {
    let (sender, receiver) = mpsc::channel();
    let started = std::thread::Builder::new()
        .name("dp-device-check".into())
        .spawn(move || {
            let outcome = catch_unwind(AssertUnwindSafe(trip)).unwrap_or_else(|payload| {
                Err(format!(
                    "it panicked: {}",
                    crate::error::panic_message(payload.as_ref())
                ))
            });
            let _ = sender.send(outcome);
        });
    let outcome = match started {
        Ok(_) => receiver
            .recv_timeout(patience)
            .unwrap_or_else(|_| Err(format!("no answer within {patience:?}"))),
        Err(error) => Err(format!("cannot start the checking thread: {error}")),
    };
    outcome.map_err(|reason| DataParallelError::DeviceTransfer {
        backend: B::name(from),
        from: format!("{from:?}"),
        to: format!("{to:?}"),
        reason,
    })
}

/// The round trip itself: `SENT` to `to`, times two plus one there, and back.
fn trip<B: Backend>(from: &B::Device, to: &B::Device) -> Result<(), String> {
    let sent = Tensor::<B, 1>::from_data(TensorData::from(SENT), from);
    let there = sent.to_device(to);
    let arrived = read(there.clone(), "the values as they arrived")?;
    if arrived != SENT {
        return Err(format!("sent {SENT:?}, {arrived:?} arrived"));
    }
    let back = read(
        there.mul_scalar(2.0).add_scalar(1.0).to_device(from),
        "the result computed there",
    )?;
    let expected = SENT.map(|v| 2.0 * v + 1.0);
    if back != expected {
        return Err(format!(
            "computing 2x + 1 there on {SENT:?} gave {back:?} back, not {expected:?}"
        ));
    }
    Ok(())
}

fn read<B: Backend>(tensor: Tensor<B, 1>, what: &str) -> Result<Vec<f32>, String> {
    tensor
        .try_into_data()
        .map_err(|error| format!("cannot read {what}: {error:?}"))?
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|error| format!("cannot read {what}: {error:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    fn failure(trip: impl FnOnce() -> Result<(), String> + Send + 'static) -> String {
        let device = Default::default();
        match check_with::<NdArray>(&device, &device, Duration::from_millis(200), trip) {
            Err(DataParallelError::DeviceTransfer {
                backend, reason, ..
            }) => {
                assert_eq!(backend, "ndarray");
                reason
            }
            other => panic!("expected a DeviceTransfer error, got {other:?}"),
        }
    }

    #[test]
    fn a_true_round_trip_passes() {
        let device = Default::default();
        trip::<NdArray>(&device, &device).unwrap();
        check::<NdArray>(&device, &device).unwrap();
    }

    #[test]
    fn a_panicking_copy_is_an_error() {
        let reason = failure(|| panic!("no device-to-device copy"));
        assert!(
            reason.contains("panicked: no device-to-device copy"),
            "{reason}"
        );
    }

    #[test]
    fn wrong_numbers_are_an_error() {
        let reason = failure(|| Err("sent [1.0], [0.0] arrived".into()));
        assert!(reason.contains("arrived"), "{reason}");
    }

    #[test]
    fn a_device_that_never_answers_is_an_error() {
        let reason = failure(|| {
            std::thread::sleep(Duration::from_secs(2));
            Ok(())
        });
        assert!(reason.contains("no answer within"), "{reason}");
    }
}
