//! Checks a CUDA build of libtorch on the GPU machine: CUDA seen, device count, and a small
//! matmul on cuda:0 compared with the CPU's. Built by scripts/build_cuda.sh (feature torch).
//!
//! usage: cargo run --release -p emshap-train --example cuda_probe

fn main() {
    use tch::{Cuda, Device, Kind, Tensor};
    let available = Cuda::is_available();
    println!("cuda available: {available}");
    println!("cudnn available: {}", Cuda::cudnn_is_available());
    println!("device count: {}", Cuda::device_count());
    if !available {
        std::process::exit(1);
    }
    let a = Tensor::randn([512, 256], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([256, 128], (Kind::Float, Device::Cpu));
    let cpu = a.matmul(&b);
    let gpu = a
        .to_device(Device::Cuda(0))
        .matmul(&b.to_device(Device::Cuda(0)));
    println!("gpu result device: {:?}", gpu.device());
    let diff = (gpu.to_device(Device::Cpu) - &cpu)
        .abs()
        .max()
        .double_value(&[]);
    let ok = diff < 1e-2;
    println!(
        "matmul 512x256 @ 256x128 on cuda:0, max |gpu - cpu| = {diff:e}: {}",
        if ok { "ok" } else { "MISMATCH" }
    );
    if !ok {
        std::process::exit(1);
    }
}
