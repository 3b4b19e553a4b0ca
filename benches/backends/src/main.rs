//! Benchmark of burn 0.22.1's CPU backends for perceptio: times a 1024x1024 f32 matmul and a pre-norm
//! transformer block (burn-nn modules) on every backend compiled in (`flex`, `ndarray`, CubeCL `cpu`),
//! interleaving the backends run by run so load on a shared machine hits them alike, and prints the
//! median of each and its ratio to `flex` measured in the same run.

#[cfg(not(feature = "flex"))]
compile_error!("flex is the reference backend of this benchmark: enable the `flex` feature");

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::config::Config;
use burn::module::Module;
use burn::nn::attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::{Gelu, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Distribution, Tensor};

/// Command-line options.
struct Args {
    runs: usize,
    warmup: usize,
    matmul_size: usize,
    seq: usize,
    wait_idle_s: usize,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let mut args = Args { runs: 20, warmup: 3, matmul_size: 1024, seq: 256, wait_idle_s: 0 };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let slot = match flag.as_str() {
                "--runs" => &mut args.runs,
                "--warmup" => &mut args.warmup,
                "--matmul-size" => &mut args.matmul_size,
                "--seq" => &mut args.seq,
                "--wait-idle" => &mut args.wait_idle_s,
                "-h" | "--help" => {
                    println!(
                        "usage: bench-backends [--runs N] [--warmup N] [--matmul-size N] [--seq N] [--wait-idle SECONDS]"
                    );
                    println!("  --wait-idle S: before each workload, wait up to S seconds for a 1 s window in");
                    println!("                 which other processes use under {IDLE_CORES} core (Linux only)");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (see --help)"),
            };
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            *slot = value.parse().with_context(|| format!("{flag}: {value:?} is not a count"))?;
        }
        if args.runs < 1 {
            bail!("--runs must be at least 1");
        }
        Ok(args)
    }
}

/// A backend: its name and its device constructor.
type Backend = (&'static str, fn() -> Device);
/// A workload ready on one device: runs it once and returns its output.
type Workload = Box<dyn Fn() -> Tensor<3>>;
/// Copies a workload's inputs and weights (made on the reference device) to a device.
type ToDevice = Box<dyn Fn(&Device) -> Workload>;

/// The backends compiled into this binary, reference (`flex`) first.
#[allow(deprecated)] // `Device::ndarray` is deprecated in burn 0.22; measuring it is the point.
fn backends() -> Vec<Backend> {
    #[cfg_attr(not(any(feature = "ndarray", feature = "cpu")), allow(unused_mut))]
    let mut list: Vec<Backend> = vec![("flex", Device::flex)];
    #[cfg(feature = "ndarray")]
    list.push(("ndarray", Device::ndarray));
    #[cfg(feature = "cpu")]
    list.push(("cpu", Device::cpu));
    list
}

/// Pre-norm transformer block: `x + attn(norm_1(x))`, then `x + mlp(norm_2(x))`.
#[derive(Config, Debug)]
struct BlockConfig {
    #[config(default = 512)]
    d_model: usize,
    #[config(default = 8)]
    n_heads: usize,
    #[config(default = 2048)]
    d_ff: usize,
}

#[derive(Module, Debug)]
struct Block {
    norm_1: LayerNorm,
    attn: MultiHeadAttention,
    norm_2: LayerNorm,
    fc_1: Linear,
    act: Gelu,
    fc_2: Linear,
}

impl BlockConfig {
    fn init(&self, device: &Device) -> Block {
        Block {
            norm_1: LayerNormConfig::new(self.d_model).init(device),
            attn: MultiHeadAttentionConfig::new(self.d_model, self.n_heads).with_dropout(0.0).init(device),
            norm_2: LayerNormConfig::new(self.d_model).init(device),
            fc_1: LinearConfig::new(self.d_model, self.d_ff).init(device),
            act: Gelu::new(),
            fc_2: LinearConfig::new(self.d_ff, self.d_model).init(device),
        }
    }
}

impl Block {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.norm_1.forward(x.clone()); // [batch, seq, d]
        let h = self.attn.forward(MhaInput::self_attn(h)).context; // [batch, seq, d]
        let x = x + h; // [batch, seq, d]
        let h = self.norm_2.forward(x.clone()); // [batch, seq, d]
        let h = self.act.forward(self.fc_1.forward(h)); // [batch, seq, d_ff]
        x + self.fc_2.forward(h) // [batch, seq, d]
    }
}

/// One workload prepared on one backend, with the times measured so far.
struct Prepared {
    name: &'static str,
    device: Device,
    run: Workload,
    times_ms: Vec<f64>,
    /// CPU time of all this process's threads during each run (empty without `/proc`).
    cpu_ms: Vec<f64>,
}

/// Runs `f`, turning a panic into an error with its message (a backend that cannot start panics).
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic without a message".to_string())
    })
}

/// Largest absolute difference between two outputs (both read back to the host).
fn max_abs_diff(a: &Tensor<3>, b: &Tensor<3>) -> anyhow::Result<f32> {
    let a = a.to_data().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let b = b.to_data().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    if a.len() != b.len() {
        bail!("outputs differ in size: {} vs {}", a.len(), b.len());
    }
    Ok(a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max))
}

/// Other processes using less than this many cores count as an idle machine for `--wait-idle`.
const IDLE_CORES: f64 = 0.1;
/// Linux reports `/proc` CPU times in USER_HZ ticks, 100 per second on every mainstream platform.
const TICKS_PER_S: f64 = 100.0;

/// CPU time (ticks) spent by the whole machine and by this process, from `/proc`.
#[derive(Clone, Copy)]
struct CpuTicks {
    machine_busy: u64,
    own: u64,
}

impl CpuTicks {
    fn read() -> Option<Self> {
        // First line of /proc/stat: "cpu user nice system idle iowait irq softirq steal ...".
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).map_while(|f| f.parse().ok()).collect();
        let busy_fields = [0, 1, 2, 5, 6, 7]; // user nice system irq softirq steal
        let machine_busy = busy_fields.iter().filter_map(|&i| fields.get(i)).sum();
        // /proc/self/stat: after the ")" closing the command name come fields 3..; utime and stime are 14 and 15.
        let own_stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let after_name = own_stat.rsplit_once(')')?.1;
        let rest: Vec<&str> = after_name.split_whitespace().collect();
        let own = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
        Some(CpuTicks { machine_busy, own })
    }
}

/// Average number of cores that processes other than this one kept busy between two readings.
fn other_cores_busy(before: Option<CpuTicks>, after: Option<CpuTicks>, wall_s: f64) -> Option<f64> {
    let (before, after) = (before?, after?);
    let machine = after.machine_busy.saturating_sub(before.machine_busy) as f64;
    let own = after.own.saturating_sub(before.own) as f64;
    Some((machine - own).max(0.0) / TICKS_PER_S / wall_s.max(1e-9))
}

/// Sleeps in 1 s windows until other processes use under `IDLE_CORES` cores, for at most `limit_s`.
fn wait_for_idle(limit_s: usize) {
    let start = Instant::now();
    loop {
        let before = CpuTicks::read();
        let t0 = Instant::now();
        std::thread::sleep(std::time::Duration::from_secs(1));
        match other_cores_busy(before, CpuTicks::read(), t0.elapsed().as_secs_f64()) {
            None => return,
            Some(cores) if cores < IDLE_CORES => return,
            Some(cores) if start.elapsed().as_secs() as usize >= limit_s => {
                println!("machine still busy ({cores:.2} cores used by others) after {limit_s} s: timing anyway");
                return;
            }
            Some(_) => {}
        }
    }
}

/// CPU time (ns) used so far by all live threads of this process, from `/proc/self/task/*/schedstat`
/// (first field: time on a CPU). Unlike wall time it does not grow while other processes hold the cores.
fn process_cpu_ns() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Median of `values`; NaN when empty.
fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Prepares `make` on every backend (inputs and weights made on flex, copied to the others so every
/// backend computes the same thing), checks outputs against flex, warms up, then times `runs`
/// rounds, each round running every backend once in turn.
fn bench(title: &str, args: &Args, make: &dyn Fn(&Device) -> ToDevice) -> anyhow::Result<()> {
    println!("\n## {title}");
    let reference = Device::flex();
    let build = make(&reference);
    let mut prepared: Vec<Prepared> = Vec::new();
    let mut reference_out: Option<Tensor<3>> = None;
    for (name, new_device) in backends() {
        let started = guarded(|| {
            let device = new_device();
            let run = build(&device);
            let out = run();
            device.sync().map(|()| (device, run, out))
        });
        let (device, run, out) = match started {
            Ok(Ok(ok)) => ok,
            Ok(Err(e)) => {
                println!("{name:>8}: FAILED to run: {e:?}");
                continue;
            }
            Err(msg) => {
                println!("{name:>8}: FAILED to run (panic): {msg}");
                continue;
            }
        };
        match &reference_out {
            None => reference_out = Some(out),
            Some(r) => {
                let diff = max_abs_diff(r, &out)?;
                println!("{name:>8}: max |out - flex out| = {diff:.2e}");
                if diff.is_nan() || diff > 1e-2 {
                    bail!("{name} disagrees with flex on {title}: max abs diff {diff}");
                }
            }
        }
        prepared.push(Prepared { name, device, run, times_ms: Vec::with_capacity(args.runs), cpu_ms: Vec::new() });
    }
    for p in &prepared {
        for _ in 0..args.warmup {
            let _out = (p.run)();
            p.device.sync().map_err(|e| anyhow::anyhow!("{}: {e:?}", p.name))?;
        }
    }
    if args.wait_idle_s > 0 {
        wait_for_idle(args.wait_idle_s);
    }
    let load_before = CpuTicks::read();
    let timed_start = Instant::now();
    for _ in 0..args.runs {
        for p in prepared.iter_mut() {
            let cpu0 = process_cpu_ns();
            let t0 = Instant::now();
            let out = (p.run)();
            p.device.sync().map_err(|e| anyhow::anyhow!("{}: {e:?}", p.name))?;
            p.times_ms.push(t0.elapsed().as_secs_f64() * 1e3);
            if let (Some(c0), Some(c1)) = (cpu0, process_cpu_ns()) {
                p.cpu_ms.push(c1.saturating_sub(c0) as f64 / 1e6);
            }
            drop(out);
        }
    }
    let others = other_cores_busy(load_before, CpuTicks::read(), timed_start.elapsed().as_secs_f64());
    match others {
        Some(cores) => println!("other processes kept {cores:.2} cores busy during the timed runs"),
        None => println!("other processes' CPU use: unknown (no /proc)"),
    }
    let flex_median = median(&prepared[0].times_ms);
    let flex_cpu = median(&prepared[0].cpu_ms);
    println!(
        "{:>8} | {:>10} | {:>9} | {:>9} | {:>11} | {:>11} | {:>9}",
        "backend", "median ms", "min ms", "max ms", "ratio/flex", "median CPU", "CPU/flex"
    );
    for p in &prepared {
        let m = median(&p.times_ms);
        let min = p.times_ms.iter().copied().fold(f64::INFINITY, f64::min);
        let max = p.times_ms.iter().copied().fold(0.0, f64::max);
        let cpu = median(&p.cpu_ms);
        println!(
            "{:>8} | {m:>10.2} | {min:>9.2} | {max:>9.2} | {:>11.2} | {cpu:>11.2} | {:>9.2}",
            p.name,
            m / flex_median,
            cpu / flex_cpu
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| "unset".to_string());
    let loadavg = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "backends: {:?}; runs {} after {} warm-up; available_parallelism {}; RAYON_NUM_THREADS={} MATMUL_NUM_THREADS={}",
        backends().iter().map(|b| b.0).collect::<Vec<_>>(),
        args.runs,
        args.warmup,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        env("RAYON_NUM_THREADS"),
        env("MATMUL_NUM_THREADS"),
    );
    println!("loadavg at start: {}", loadavg().trim());

    let n = args.matmul_size;
    bench(&format!("matmul {n}x{n} f32"), &args, &|reference: &Device| {
        let a = Tensor::<2>::random([n, n], Distribution::Default, reference); // [n, n]
        let b = Tensor::<2>::random([n, n], Distribution::Default, reference); // [n, n]
        Box::new(move |device: &Device| {
            let a = a.clone().to_device(device); // [n, n]
            let b = b.clone().to_device(device); // [n, n]
            Box::new(move || a.clone().matmul(b.clone()).unsqueeze::<3>()) // [1, n, n]
        })
    })?;

    let seq = args.seq;
    let config = BlockConfig::new();
    bench(
        &format!(
            "transformer block (pre-norm MHA + MLP), d {}, {} heads, d_ff {}, seq {seq}, batch 1",
            config.d_model, config.n_heads, config.d_ff
        ),
        &args,
        &|reference: &Device| {
            let block = config.init(reference);
            let x = Tensor::<3>::random([1, seq, config.d_model], Distribution::Normal(0.0, 1.0), reference); // [batch, seq, d]
            Box::new(move |device: &Device| {
                let block = block.clone().to_device(device);
                let x = x.clone().to_device(device); // [batch, seq, d]
                Box::new(move || block.forward(x.clone())) // [batch, seq, d]
            })
        },
    )?;

    println!("\nloadavg at end: {}", loadavg().trim());
    Ok(())
}
