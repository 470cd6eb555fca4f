//! The report: every measurement, the ratios the targets are read from, as Markdown and JSON.

use crate::spec::{Measurement, Phases, Runner, Workload};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Report {
    pub command: Vec<String>,
    pub unix_time: u64,
    pub cpu: String,
    pub logical_cpus: usize,
    pub features: Vec<&'static str>,
    pub measurements: Vec<Measurement>,
    pub ratios: Vec<Ratio>,
}

/// One figure of merit: `numerator / denominator` of rows (or samples) per second.
#[derive(Debug, Serialize)]
pub struct Ratio {
    pub workload: Workload,
    pub what: String,
    pub numerator: String,
    pub denominator: String,
    pub value: f64,
}

impl Report {
    pub fn new(measurements: Vec<Measurement>, command: Vec<String>) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let mut features = Vec::new();
        if cfg!(feature = "cuda") {
            features.push("cuda");
        }
        if cfg!(feature = "flex") {
            features.push("flex");
        }
        if cfg!(feature = "blas") {
            features.push("blas (OpenBLAS)");
        }
        if cfg!(feature = "burn-train") {
            features.push("burn-train");
        }
        if cfg!(feature = "mpi") {
            features.push("mpi");
        }
        features.push(if cfg!(feature = "mimalloc") {
            "mimalloc"
        } else {
            "system allocator"
        });
        let ratios = ratios(&measurements);
        Self {
            command,
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            cpu,
            logical_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            features,
            measurements,
            ratios,
        }
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        md.push_str(&format!(
            "Machine: {} ({} logical CPUs); backend: {}; features: {}\n\n",
            self.cpu,
            self.logical_cpus,
            self.measurements
                .first()
                .map_or("?", |m| m.backend.as_str()),
            if self.features.is_empty() {
                "default".to_owned()
            } else {
                self.features.join(", ")
            },
        ));
        for workload in [
            Workload::Tutorial,
            Workload::Inference,
            Workload::Training,
            Workload::UnequalReplicas,
            Workload::ImageFolder,
        ] {
            let rows: Vec<&Measurement> = self
                .measurements
                .iter()
                .filter(|m| m.spec.workload == workload)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let (unit, per) = match workload {
                Workload::Tutorial => ("µs per call", 1e6),
                Workload::Inference => ("ms per batch of 1024", 1e3),
                Workload::Training | Workload::UnequalReplicas | Workload::ImageFolder => {
                    ("ms per step (median)", 1e3)
                }
            };
            let rate = if matches!(
                workload,
                Workload::Training | Workload::UnequalReplicas | Workload::ImageFolder
            ) {
                "samples/s"
            } else {
                "rows/s"
            };
            md.push_str(&format!(
                "### {}\n\n| configuration | {unit} | {rate} | iterations |\n|---|---:|---:|---:|\n",
                title(workload)
            ));
            for m in &rows {
                let exchanged = m
                    .exchanged_values
                    .map_or_else(String::new, |v| format!("; {v} values exchanged per step"));
                let exchanged = match (m.compute_seconds, m.exchange_seconds) {
                    (Some(compute), Some(exchange)) => format!(
                        "{exchanged} ({:.1} ms forward and backward, {:.1} ms in the exchange)",
                        compute * 1e3,
                        exchange * 1e3
                    ),
                    _ => exchanged,
                };
                let exchanged = match m.optimizer_bytes {
                    Some(bytes) => format!("{exchanged}; optimizer state {bytes} bytes per rank"),
                    None => exchanged,
                };
                let exchanged = match &m.replica_rows {
                    Some(rows) if rows.len() > 1 => format!("{exchanged} (rows {rows:?})"),
                    _ => exchanged,
                };
                let exchanged = match m.load_seconds {
                    Some(load) => {
                        format!("{exchanged}; loading a batch alone {:.1} ms", load * 1e3)
                    }
                    None => exchanged,
                };
                md.push_str(&format!(
                    "| {}{exchanged} | {:.2} | {:.0} | {} |\n",
                    m.spec.label(),
                    m.median_seconds * per,
                    m.rows_per_second,
                    m.iterations
                ));
            }
            let ratios: Vec<&Ratio> = self
                .ratios
                .iter()
                .filter(|r| r.workload == workload)
                .collect();
            if !ratios.is_empty() {
                md.push_str("\n| ratio | value |\n|---|---:|\n");
                for r in ratios {
                    md.push_str(&format!("| {} | {:.3} |\n", r.what, r.value));
                }
            }
            md.push('\n');
            md.push_str(&phases_table(&rows));
        }
        md
    }
}

/// Where the trainer's steps spend their time, and what the replicas exchange.
fn phases_table(rows: &[&Measurement]) -> String {
    let with: Vec<(&Measurement, &Phases)> = rows
        .iter()
        .filter_map(|m| m.phases.as_ref().map(|p| (*m, p)))
        .collect();
    if with.is_empty() {
        return String::new();
    }
    let ms = |seconds: f64| format!("{:.2}", seconds * 1e3);
    let each = |values: &[f64]| {
        values
            .iter()
            .map(|&v| ms(v))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let mut md = String::from(
        "Where a step's time goes (ms, medians; per replica: replica 0 / 1 / ...; \"waiting\" is \
         the replicas' phase less the replica's own forward and backward: splitting, copies, \
         waiting for the slowest, reading the loss) and what each replica sends and receives \
         per step, in values, against a ring all-reduce's `2 (n - 1) / n` of them:\n\n\
         | configuration | step | forward + backward | waiting | gradient sum | optimizer step | \
         sent / received per replica | most / ring bound |\n|---|---:|---:|---:|---:|---:|---|---:|\n",
    );
    for (m, p) in with {
        let traffic = m.traffic.as_ref().map_or_else(
            || ("".to_owned(), "".to_owned()),
            |t| {
                (
                    format!("{:?} / {:?}", t.sent, t.received),
                    format!("{:.2}", t.over_ring_bound),
                )
            },
        );
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            m.spec.label(),
            ms(p.step),
            each(&p.replica_compute),
            each(&p.replica_wait),
            ms(p.combine),
            ms(p.optimizer),
            traffic.0,
            traffic.1,
        ));
    }
    md.push('\n');
    md
}

fn title(workload: Workload) -> &'static str {
    match workload {
        Workload::Tutorial => "W1: the tutorial, Linear(5, 2) on a batch of 30 (per-call cost)",
        Workload::Inference => "W2: inference, MLP 256-1024-1024-10, batch 1024",
        Workload::Training => {
            "W3: training step, same MLP, global batch 256, cross-entropy, SGD 0.05"
        }
        Workload::UnequalReplicas => {
            "W4: W3 on 2 replicas of unequal speed (replica 1 computes every row twice)"
        }
        Workload::ImageFolder => {
            "W5: CNN with batch norm, 2048 28x28 PNGs, batch 64 on 2 devices: from disk or memory"
        }
    }
}

fn find(
    ms: &[Measurement],
    w: Workload,
    r: Runner,
    devices: usize,
    threads: Option<usize>,
) -> Option<&Measurement> {
    ms.iter().find(|m| {
        m.spec.workload == w
            && m.spec.runner == r
            && m.spec.devices == devices
            && m.spec.threads == threads
    })
}

fn ratios(ms: &[Measurement]) -> Vec<Ratio> {
    let mut out = Vec::new();
    fn ratio(
        workload: Workload,
        what: String,
        a: Option<&Measurement>,
        b: Option<&Measurement>,
    ) -> Option<Ratio> {
        let (a, b) = (a?, b?);
        Some(Ratio {
            workload,
            what,
            numerator: a.spec.label(),
            denominator: b.spec.label(),
            value: a.rows_per_second / b.rows_per_second,
        })
    }
    // The DataParallel run with the same devices and threads as `m`.
    let data_parallel_like = |m: &Measurement| {
        find(
            ms,
            m.spec.workload,
            Runner::DataParallel,
            m.spec.devices,
            m.spec.threads,
        )
    };
    let plain_w1 = find(ms, Workload::Tutorial, Runner::Plain, 1, None);
    // The plain call's matrix product is too small to be threaded: thread settings do not
    // change W1, so every data-parallel row is compared with the one plain row.
    for m in ms
        .iter()
        .filter(|m| m.spec.workload == Workload::Tutorial && m.spec.runner == Runner::DataParallel)
    {
        if let Some(plain) = plain_w1 {
            let overhead = (m.median_seconds - plain.median_seconds) * 1e6;
            out.push(Ratio {
                workload: Workload::Tutorial,
                what: format!(
                    "overhead of DataParallel x{} over the plain call, µs",
                    m.spec.devices
                ),
                numerator: m.spec.label(),
                denominator: plain.spec.label(),
                value: overhead,
            });
        }
    }
    out.extend(unequal_devices(ms));
    out.extend(images_from_disk(ms));
    for w in [Workload::Inference, Workload::Training] {
        out.extend(ratio(
            w,
            "DataParallel x1 / plain (wrapper cost; 1.0 = free)".into(),
            find(ms, w, Runner::DataParallel, 1, None),
            find(ms, w, Runner::Plain, 1, None),
        ));
        let base = find(ms, w, Runner::DataParallel, 1, Some(1)).or(find(
            ms,
            w,
            Runner::DataParallel,
            1,
            None,
        ));
        for m in ms.iter().filter(|m| {
            m.spec.workload == w && m.spec.runner == Runner::DataParallel && m.spec.devices > 1
        }) {
            out.extend(ratio(
                w,
                format!(
                    "scaling: DataParallel x{} / x1, equal threads per replica",
                    m.spec.devices
                ),
                Some(m),
                base,
            ));
        }
        let best = |runner: Runner| {
            ms.iter()
                .filter(|m| m.spec.workload == w && m.spec.runner == runner)
                .max_by(|a, b| a.rows_per_second.total_cmp(&b.rows_per_second))
        };
        out.extend(ratio(
            w,
            "best DataParallel / best single-device plain".into(),
            best(Runner::DataParallel),
            best(Runner::Plain),
        ));
        for m in ms
            .iter()
            .filter(|m| m.spec.workload == w && m.spec.runner == Runner::Ceiling)
        {
            out.extend(ratio(
                w,
                format!(
                    "ceiling for x{} / DataParallel x1 (the best scaling this backend allows)",
                    m.spec.devices
                ),
                Some(m),
                base,
            ));
            out.extend(ratio(
                w,
                format!(
                    "DataParallel x{} / its ceiling (share of the possible)",
                    m.spec.devices
                ),
                data_parallel_like(m),
                Some(m),
            ));
        }
        let one_rank = find(ms, w, Runner::MpiRanks, 1, Some(1));
        for m in ms.iter().filter(|m| {
            m.spec.workload == w && m.spec.runner == Runner::MpiRanks && m.spec.devices > 1
        }) {
            out.extend(ratio(
                w,
                format!(
                    "MPI: {} ranks / 1 rank (scaling across processes)",
                    m.spec.devices
                ),
                Some(m),
                one_rank,
            ));
            out.extend(ratio(
                w,
                format!(
                    "in-process DataParallel x{} / MPI {} ranks",
                    m.spec.devices, m.spec.devices
                ),
                data_parallel_like(m),
                Some(m),
            ));
        }
        for m in ms
            .iter()
            .filter(|m| m.spec.workload == w && m.spec.runner == Runner::ForwardBackward)
        {
            out.extend(ratio(
                w,
                format!(
                    "forward + backward() through DataParallel x{n} / DataParallelTrainer x{n}",
                    n = m.spec.devices
                ),
                Some(m),
                find(ms, w, Runner::DataParallel, m.spec.devices, m.spec.threads),
            ));
        }
        for m in ms
            .iter()
            .filter(|m| m.spec.workload == w && m.spec.runner == Runner::Seeded)
        {
            out.extend(ratio(
                w,
                format!(
                    "seeded DataParallelTrainer x{n} / unseeded x{n}",
                    n = m.spec.devices
                ),
                Some(m),
                find(ms, w, Runner::DataParallel, m.spec.devices, m.spec.threads),
            ));
        }
        for (sharded, plain, what) in [
            (Runner::Sharded, Runner::DataParallel, "SGD"),
            (Runner::ShardedAdam, Runner::Adam, "Adam"),
        ] {
            for m in ms
                .iter()
                .filter(|m| m.spec.workload == w && m.spec.runner == sharded)
            {
                out.extend(ratio(
                    w,
                    format!(
                        "{what}, DataParallel x{}: optimizer step sharded / on the first device",
                        m.spec.devices
                    ),
                    Some(m),
                    find(ms, w, plain, m.spec.devices, m.spec.threads),
                ));
                if let Some(ceiling) = find(ms, w, Runner::Ceiling, m.spec.devices, m.spec.threads)
                    && sharded == Runner::Sharded
                {
                    out.extend(ratio(
                        w,
                        format!(
                            "DataParallel x{}, sharded step / its ceiling (share of the possible)",
                            m.spec.devices
                        ),
                        Some(m),
                        Some(ceiling),
                    ));
                }
            }
        }
        for m in ms
            .iter()
            .filter(|m| m.spec.workload == w && m.spec.runner == Runner::MpiRanksFineTune)
        {
            out.extend(ratio(
                w,
                format!(
                    "MPI {} ranks: last layer trained / all layers trained",
                    m.spec.devices
                ),
                Some(m),
                find(ms, w, Runner::MpiRanks, m.spec.devices, Some(1)),
            ));
        }
        for m in ms
            .iter()
            .filter(|m| m.spec.workload == w && m.spec.runner == Runner::MpiRanksSharded)
        {
            out.extend(ratio(
                w,
                format!(
                    "MPI {} ranks, Adam: state sharded / not sharded (samples/s)",
                    m.spec.devices
                ),
                Some(m),
                find(ms, w, Runner::MpiRanksAdam, m.spec.devices, Some(1)),
            ));
        }
        for m in ms
            .iter()
            .filter(|m| m.spec.workload == w && m.spec.runner == Runner::BurnTrain)
        {
            out.extend(ratio(
                w,
                format!(
                    "DataParallel x{} / burn-train x{}, same threads",
                    m.spec.devices, m.spec.devices
                ),
                data_parallel_like(m),
                Some(m),
            ));
            out.extend(ratio(
                w,
                format!(
                    "burn-train on DataParallelStrategy x{} / burn-train multi x{} (samples/s)",
                    m.spec.devices, m.spec.devices
                ),
                find(
                    ms,
                    w,
                    Runner::BurnTrainStrategy,
                    m.spec.devices,
                    m.spec.threads,
                ),
                Some(m),
            ));
        }
    }
    out
}

/// W5: the images read from disk against the same images in memory, each with and without
/// prefetch; and what prefetch gains on disk.
fn images_from_disk(ms: &[Measurement]) -> Vec<Ratio> {
    let w = Workload::ImageFolder;
    let find = |runner: Runner| {
        ms.iter()
            .find(|m| m.spec.workload == w && m.spec.runner == runner)
    };
    let pair = |what: &str, a: Option<&Measurement>, b: Option<&Measurement>| {
        let (a, b) = (a?, b?);
        Some(Ratio {
            workload: w,
            what: what.to_owned(),
            numerator: a.spec.label(),
            denominator: b.spec.label(),
            value: a.rows_per_second / b.rows_per_second,
        })
    };
    let disk = |prefetch| find(Runner::FromDisk { prefetch });
    let memory = |prefetch| find(Runner::Preloaded { prefetch });
    [
        pair(
            "from disk, prefetch 2 / preloaded, prefetch 2 (target: at least 0.9)",
            disk(2),
            memory(2),
        ),
        pair(
            "from disk, prefetch 2 / preloaded, no prefetch",
            disk(2),
            memory(0),
        ),
        pair(
            "from disk, no prefetch / preloaded, no prefetch",
            disk(0),
            memory(0),
        ),
        pair("from disk: prefetch 2 / no prefetch", disk(2), disk(0)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// W4: each split against the ideal (the two replicas' throughputs alone, added) and against
/// the `torch.chunk` split.
fn unequal_devices(ms: &[Measurement]) -> Vec<Ratio> {
    let w = Workload::UnequalReplicas;
    let alone: Vec<&Measurement> = (0..2)
        .filter_map(|i| {
            ms.iter()
                .find(|m| m.spec.workload == w && m.spec.runner == Runner::ReplicaAlone(i))
        })
        .collect();
    let splits: Vec<&Measurement> = ms
        .iter()
        .filter(|m| m.spec.workload == w && m.spec.runner == Runner::DataParallel)
        .collect();
    let chunk = splits
        .iter()
        .find(|m| m.spec.split == dp_tools::split::Split::Chunk);
    let equal = ms
        .iter()
        .find(|m| m.spec.workload == w && m.spec.runner == Runner::EqualReplicas);
    let mut out = Vec::new();
    let ideal = (alone.len() == 2).then(|| {
        (
            alone[0].rows_per_second + alone[1].rows_per_second,
            format!("{} + {}", alone[0].spec.label(), alone[1].spec.label()),
        )
    });
    if let (Some(equal), [fast, _]) = (equal, alone.as_slice()) {
        out.push(Ratio {
            workload: w,
            what: "two equal replicas at once / twice one alone (what this machine allows)".into(),
            numerator: equal.spec.label(),
            denominator: format!("2 x {}", fast.spec.label()),
            value: equal.rows_per_second / (2.0 * fast.rows_per_second),
        });
    }
    for m in &splits {
        if let Some((ideal, label)) = &ideal {
            out.push(Ratio {
                workload: w,
                what: format!("{} / ideal (replicas alone, added)", m.spec.label()),
                numerator: m.spec.label(),
                denominator: label.clone(),
                value: m.rows_per_second / ideal,
            });
        }
        if let Some(chunk) = chunk.filter(|c| c.spec.split != m.spec.split) {
            out.push(Ratio {
                workload: w,
                what: format!("{} / torch.chunk split", m.spec.label()),
                numerator: m.spec.label(),
                denominator: chunk.spec.label(),
                value: m.rows_per_second / chunk.rows_per_second,
            });
        }
    }
    out
}
