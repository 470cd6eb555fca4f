//! Burn 0.21 has no copy between two wgpu devices: `to_device` panics on a device thread and
//! leaves a tensor that cannot be read. `DataParallel` must refuse such devices with a typed
//! error before its first call computes anything (feature `wgpu`, which CI does not build; run
//! `cargo test --features wgpu --test wgpu_devices` where Vulkan is installed, a CPU-only
//! machine included: `apt install mesa-vulkan-drivers libvulkan1` gives Mesa's lavapipe).
#![cfg(feature = "wgpu")]

use burn::backend::Wgpu;
use burn::backend::wgpu::WgpuDevice;
use burn::module::Module;
use burn::nn::LinearConfig;
use burn::tensor::Tensor;
use burn_data_parallel::{DataParallel, DataParallelError};
use std::panic::{AssertUnwindSafe, catch_unwind};

#[test]
fn two_wgpu_devices_are_refused_before_any_number_is_computed() {
    let (first, second) = (WgpuDevice::DefaultDevice, WgpuDevice::Cpu);
    let ones = catch_unwind(|| Tensor::<Wgpu, 2>::ones([6, 4], &first).into_data());
    if ones.is_err() {
        eprintln!("skipped: no wgpu adapter (install a Vulkan driver)");
        return;
    }
    let model = LinearConfig::new(4, 2).init::<Wgpu>(&first).fork(&first);
    let x = Tensor::<Wgpu, 2>::ones([6, 4], &first);

    // What a plain device move gives on Burn 0.21: no readable tensor.
    let moved = catch_unwind(AssertUnwindSafe(|| {
        x.clone().to_device(&second).into_data()
    }));
    assert!(
        moved.is_err(),
        "Burn copies between wgpu devices now: update the README"
    );

    let mut dp = DataParallel::new(model, vec![first, second]).unwrap();
    let err = dp.forward(x, |m, x| m.forward(x)).unwrap_err();
    match &err {
        DataParallelError::DeviceTransfer {
            backend, from, to, ..
        } => {
            assert!(backend.contains("wgpu"), "{err}");
            assert_eq!((from.as_str(), to.as_str()), ("DefaultDevice", "Cpu"));
        }
        other => panic!("expected DeviceTransfer, got {other}"),
    }
}
