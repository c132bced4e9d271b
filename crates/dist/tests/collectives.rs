//! Two-process tests of the c10d shim on loopback (Gloo, CPU): exact all-reduce sums from 1 to
//! 10 million elements in every dtype training uses, broadcast, all-gather, barrier, repeated
//! create/destroy, and failures that end in bounded time with the guilty rank named.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_all_ok, run_ranks, RankRun, SCENARIO};
use loraplus_dist::{
    launch_local, Backend, DistEnv, DistError, LocalLaunch, ProcessGroup, ProcessGroupOptions,
};
use loraplus_testing::cuda_present;
use tch::{Device, Kind, Tensor};

/// Collective timeout of the healthy scenarios: generous, only a failed test ever waits it.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Collective timeout of the hang scenario.
const SHORT_TIMEOUT: Duration = Duration::from_secs(3);
/// Wall-clock limit for one scenario's ranks, after which the test kills them and fails.
const LIMIT: Duration = Duration::from_secs(90);
/// The most a failure scenario may take: timeout + heartbeat diagnosis + start-up.
const FAILURE_BOUND: Duration = Duration::from_secs(30);

/// Element counts of the all-reduce sweep, 1 to 10 million (odd sizes included).
const SIZES: [i64; 8] = [1, 2, 3, 257, 4_099, 65_537, 1_048_576, 10_000_000];
/// Above this size only f32 and i64 run (the sweep's time is in the big ones).
const BIG: i64 = 1_048_576;

/// All-reduces of the stress loop, their largest size and the seed of their sizes.
const STRESS_ROUNDS: usize = 400;
const STRESS_MAX_SIZE: u64 = 50_000;
const STRESS_SEED: u64 = 13;

/// The child-rank entry point: plays `$LORAPLUS_DIST_SCENARIO`, a no-op in the parent.
#[test]
fn worker() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    tch::set_num_threads(1);
    let env = DistEnv::from_env().expect("launcher variables");
    println!("rank {} agent-store={}", env.rank, env.use_agent_store);
    let result = match scenario.as_str() {
        "allreduce" => allreduce_scenario(&env),
        "broadcast" => broadcast_scenario(&env),
        "recreate" => recreate_scenario(&env),
        "die" => die_scenario(&env),
        "hang" => hang_scenario(&env),
        other => Err(format!("unknown scenario {other}")),
    };
    if let Err(e) = result {
        eprintln!("rank {}: {e}", env.rank);
        std::process::exit(1);
    }
}

/// The scenario's backend and device: Gloo on the CPU unless `TEST_BACKEND` (gloo, nccl) and
/// `TEST_DEVICE` (cpu, cuda) say otherwise (the CUDA tests).
fn backend_and_device() -> (Backend, Device) {
    let backend = match std::env::var("TEST_BACKEND").as_deref() {
        Ok("nccl") => Backend::Nccl,
        _ => Backend::Gloo,
    };
    let device = match std::env::var("TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    };
    (backend, device)
}

fn group(env: &DistEnv, timeout: Duration) -> Result<ProcessGroup, String> {
    let mut opts = ProcessGroupOptions::from_env(env, backend_and_device().0);
    opts.timeout = timeout;
    ProcessGroup::new(&opts).map_err(|e| e.to_string())
}

/// Rank r's input: `base * (r + 1)`, so the sum over ranks is `base * w(w+1)/2`, exact in
/// every dtype for the bases below.
fn base(n: i64, kind: Kind) -> Tensor {
    // bf16 holds integers exactly up to 256: keep 3 * base under it.
    let modulus = match kind {
        Kind::BFloat16 => 61,
        Kind::Float => 1 << 20,
        _ => i64::MAX,
    };
    Tensor::arange(n, (Kind::Int64, Device::Cpu))
        .remainder(modulus)
        .to_kind(kind)
        .to_device(backend_and_device().1)
}

fn allreduce_scenario(env: &DistEnv) -> Result<(), String> {
    let pg = group(env, TIMEOUT)?;
    let w = env.world_size as i64;
    let factor = w * (w + 1) / 2;
    for n in SIZES {
        for kind in [Kind::Float, Kind::Double, Kind::BFloat16, Kind::Int64] {
            if n > BIG && matches!(kind, Kind::Double | Kind::BFloat16) {
                continue;
            }
            let b = base(n, kind);
            let mut t = [&b * (env.rank as i64 + 1)];
            let ptr = t[0].data_ptr();
            let start = Instant::now();
            pg.allreduce_sum(&mut t).map_err(|e| e.to_string())?;
            if n == SIZES[SIZES.len() - 1] && env.rank == 0 {
                println!("TIMING {kind:?} x {n}: {:?}", start.elapsed());
            }
            if t[0].data_ptr() != ptr {
                return Err(format!("{kind:?} x {n}: the result is not in place"));
            }
            let expected = &b * factor;
            if !t[0].equal(&expected) {
                let diff = (&t[0] - &expected).abs().to_kind(Kind::Double).max();
                return Err(format!(
                    "{kind:?} x {n}: sum differs from the expected, max |diff| {}",
                    diff.double_value(&[])
                ));
            }
        }
    }
    // Stress: many all-reduces of pseudo-random sizes and dtypes, the same sequence on every
    // rank (a fixed linear congruential generator), each checked exactly.
    let mut state: u64 = STRESS_SEED;
    let kinds = [Kind::Float, Kind::Double, Kind::BFloat16, Kind::Int64];
    for i in 0..STRESS_ROUNDS {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let n = 1 + ((state >> 33) % STRESS_MAX_SIZE) as i64;
        let kind = kinds[i % kinds.len()];
        let b = base(n, kind);
        let mut t = [&b * (env.rank as i64 + 1)];
        pg.allreduce_sum(&mut t).map_err(|e| e.to_string())?;
        if !t[0].equal(&(&b * factor)) {
            return Err(format!("stress round {i}: {kind:?} x {n}: sum differs"));
        }
    }
    // Mean: base * (w + 1) / 2, exact for these bases in f32.
    let b = base(4_099, Kind::Float);
    let mut t = [&b * (env.rank as f64 + 1.0)];
    pg.allreduce_mean(&mut t).map_err(|e| e.to_string())?;
    if !t[0].equal(&(&b * ((w + 1) as f64 / 2.0))) {
        return Err("mean differs".to_string());
    }
    // Max over ranks, and a refused integer mean.
    let dev = backend_and_device().1;
    let mut t = [Tensor::from_slice(&[env.rank as i64, -(env.rank as i64)]).to_device(dev)];
    pg.allreduce_max(&mut t).map_err(|e| e.to_string())?;
    if Vec::<i64>::try_from(&t[0].to_device(Device::Cpu)).map_err(|e| e.to_string())? != [w - 1, 0]
    {
        return Err(format!("max gave {t:?}"));
    }
    match pg.allreduce_mean(&mut [Tensor::from_slice(&[1i64]).to_device(dev)]) {
        Err(DistError::Tensor { problem, .. }) if problem.contains("floating-point") => {}
        other => return Err(format!("an i64 mean should be refused, got {other:?}")),
    }
    // Coalesced: several shapes, one dtype, one collective.
    let parts = [
        base(10, Kind::Float),
        base(1_000, Kind::Float).view([10, 100]),
    ];
    let mut t: Vec<Tensor> = parts.iter().map(|p| p * (env.rank as f64 + 1.0)).collect();
    pg.allreduce_coalesced_sum(&mut t)
        .map_err(|e| e.to_string())?;
    for (got, p) in t.iter().zip(&parts) {
        if !got.equal(&(p * factor)) {
            return Err("coalesced sum differs".to_string());
        }
    }
    pg.barrier().map_err(|e| e.to_string())
}

fn broadcast_scenario(env: &DistEnv) -> Result<(), String> {
    let pg = group(env, TIMEOUT)?;
    let root = env.world_size - 1;
    let source = base(100_003, Kind::Float);
    for kind in [Kind::Float, Kind::BFloat16, Kind::Int64] {
        let mut t = if env.rank == root {
            source.to_kind(kind)
        } else {
            Tensor::zeros([100_003], (kind, Device::Cpu))
        };
        pg.broadcast(&mut t, root).map_err(|e| e.to_string())?;
        if !t.equal(&source.to_kind(kind)) {
            return Err(format!("{kind:?}: broadcast differs from root's tensor"));
        }
    }
    // All-gather: rank r contributes [r, r, r]; ragged: rank r has r + 1 rows of 2.
    let mine = Tensor::full([3], env.rank as f64, (Kind::Double, Device::Cpu));
    let all = pg.allgather(&mine).map_err(|e| e.to_string())?;
    for (r, t) in all.iter().enumerate() {
        if !t.equal(&Tensor::full([3], r as f64, (Kind::Double, Device::Cpu))) {
            return Err(format!("all-gather: rank {r}'s part is {t:?}"));
        }
    }
    let rows = Tensor::full(
        [env.rank as i64 + 1, 2],
        env.rank as i64,
        (Kind::Int64, Device::Cpu),
    );
    let cat = pg.allgather_rows(&rows).map_err(|e| e.to_string())?;
    let expected = Tensor::cat(
        &(0..env.world_size as i64)
            .map(|r| Tensor::full([r + 1, 2], r, (Kind::Int64, Device::Cpu)))
            .collect::<Vec<_>>(),
        0,
    );
    if !cat.equal(&expected) {
        return Err(format!("ragged all-gather gave {cat:?}"));
    }
    for _ in 0..3 {
        pg.barrier().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Groups created and destroyed in turn, each on its own store (port + i).
fn recreate_scenario(env: &DistEnv) -> Result<(), String> {
    const ROUNDS: u16 = 5;
    let ports: Vec<u16> = std::env::var("TEST_PORTS")
        .map_err(|_| "TEST_PORTS not set".to_string())?
        .split(',')
        .map(|p| p.parse().map_err(|_| format!("bad port {p}")))
        .collect::<Result<_, _>>()?;
    for (i, &port) in ports.iter().enumerate().take(ROUNDS as usize) {
        let mut env = env.clone();
        env.master_port = port;
        let pg = group(&env, TIMEOUT)?;
        let mut t = [Tensor::full(
            [1000],
            (i + env.rank) as f64,
            (Kind::Float, Device::Cpu),
        )];
        pg.allreduce_sum(&mut t).map_err(|e| e.to_string())?;
        let w = env.world_size;
        let expected = (i * w + w * (w - 1) / 2) as f64;
        if !t[0].equal(&Tensor::full([1000], expected, (Kind::Float, Device::Cpu))) {
            return Err(format!("round {i}: wrong sum"));
        }
        // Every rank is done with the store before its owner (rank 0) takes it down.
        pg.barrier().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `DYING_RANK` kills itself (SIGKILL: no cleanup) after one all-reduce; the others must see
/// the next all-reduce fail, naming it. Survivors print `SURVIVOR-ERROR: <message>`.
fn die_scenario(env: &DistEnv) -> Result<(), String> {
    let dying: usize = std::env::var("DYING_RANK")
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or("DYING_RANK not set")?;
    let pg = group(env, TIMEOUT)?;
    let mut t = [Tensor::ones([1000], (Kind::Float, Device::Cpu))];
    pg.allreduce_sum(&mut t).map_err(|e| e.to_string())?;
    if env.rank == dying {
        // SAFETY: signals this very process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    let start = Instant::now();
    for _ in 0..1000 {
        if let Err(e) = pg.allreduce_sum(&mut t) {
            println!("SURVIVOR-ERROR after {:?}: {e}", start.elapsed());
            return Ok(());
        }
    }
    Err("all-reduces kept succeeding after the peer died".to_string())
}

/// Rank 1 stays alive but never joins the second all-reduce; rank 0's must time out, naming
/// rank 1 as behind.
fn hang_scenario(env: &DistEnv) -> Result<(), String> {
    let pg = group(env, SHORT_TIMEOUT)?;
    let mut t = [Tensor::ones([10], (Kind::Float, Device::Cpu))];
    pg.allreduce_sum(&mut t).map_err(|e| e.to_string())?;
    let done = std::env::var("TEST_DONE_FILE").map_err(|_| "TEST_DONE_FILE not set")?;
    if env.rank == 1 {
        // Alive (heartbeat beating) but stuck, until rank 0 has reported.
        let start = Instant::now();
        while !Path::new(&done).exists() && start.elapsed() < LIMIT {
            std::thread::sleep(Duration::from_millis(100));
        }
        return Ok(());
    }
    let result = match pg.allreduce_sum(&mut t) {
        Err(e) => {
            println!("SURVIVOR-ERROR: {e}");
            Ok(())
        }
        Ok(()) => Err("the all-reduce succeeded without rank 1".to_string()),
    };
    std::fs::write(&done, b"done").map_err(|e| format!("{done}: {e}"))?;
    result
}

#[test]
fn allreduce_sums_are_exact_from_1_to_10m_elements_in_every_dtype() {
    let runs = run_ranks("allreduce", 2, &[], LIMIT);
    assert_all_ok("allreduce", &runs);
    for line in runs[0].stdout.lines().filter(|l| l.starts_with("TIMING")) {
        eprintln!("{line}");
    }
}

/// On a GPU (`make gpu-check`): NCCL with one rank (NCCL refuses two ranks on one GPU), the
/// same exact sums, stress loop, mean, max and coalesced reduction as the Gloo test, in place on
/// CUDA tensors. Needs a build with the NCCL path (`make setup` installs its headers).
#[test]
fn cuda_nccl_allreduce_is_exact_on_one_gpu() {
    if !cuda_present() {
        return;
    }
    assert!(
        Backend::Nccl.is_built(),
        "this build has no NCCL path: CUDA's crt/cccl headers or nccl.h were missing at build time"
    );
    let extra = [
        ("TEST_BACKEND", "nccl".into()),
        ("TEST_DEVICE", "cuda".into()),
    ];
    let runs = run_ranks("allreduce", 1, &extra, LIMIT);
    assert_all_ok("nccl allreduce", &runs);
    for line in runs[0].stdout.lines().filter(|l| l.starts_with("TIMING")) {
        eprintln!("nccl {line}");
    }
}

/// On a GPU: Gloo reducing CUDA tensors, two ranks sharing the one GPU.
#[test]
fn cuda_gloo_allreduce_of_cuda_tensors_is_exact_with_two_ranks_on_one_gpu() {
    if !cuda_present() {
        return;
    }
    let extra = [
        ("TEST_BACKEND", "gloo".into()),
        ("TEST_DEVICE", "cuda".into()),
    ];
    let runs = run_ranks("allreduce", 2, &extra, LIMIT);
    assert_all_ok("gloo cuda allreduce", &runs);
    for line in runs[0].stdout.lines().filter(|l| l.starts_with("TIMING")) {
        eprintln!("gloo-cuda {line}");
    }
}

/// Where the NCCL path is built but no GPU is present (CI), an NCCL group is refused with
/// NCCL's reason, as an error, not a crash.
#[test]
fn an_nccl_group_without_a_gpu_is_an_error() {
    if !Backend::Nccl.is_built() {
        eprintln!("skipped: this build has no NCCL path (its headers were missing at build time)");
        return;
    }
    if tch::Cuda::is_available() {
        eprintln!("skipped: a GPU is present (the CUDA tests cover NCCL)");
        return;
    }
    let mut opts = ProcessGroupOptions::new("127.0.0.1", common::free_port(), 0, 1, Backend::Nccl);
    opts.timeout = SHORT_TIMEOUT;
    let e = ProcessGroup::new(&opts)
        .expect_err("NCCL without a GPU")
        .to_string();
    assert!(e.to_lowercase().contains("nccl"), "{e}");
    eprintln!("{e}");
}

#[test]
fn broadcast_allgather_and_barrier_agree_on_every_rank() {
    let runs = run_ranks("broadcast", 2, &[], LIMIT);
    assert_all_ok("broadcast", &runs);
}

#[test]
fn groups_can_be_created_and_destroyed_repeatedly() {
    let ports: Vec<String> = (0..5).map(|_| common::free_port().to_string()).collect();
    let runs = run_ranks("recreate", 2, &[("TEST_PORTS", ports.join(","))], LIMIT);
    assert_all_ok("recreate", &runs);
}

fn survivor_message(scenario: &str, runs: &[RankRun], survivor: usize) -> String {
    let run = &runs[survivor];
    assert!(
        run.ok(),
        "scenario {scenario}: the survivor failed: {runs:#?}"
    );
    run.stdout
        .lines()
        .find(|l| l.contains("SURVIVOR-ERROR"))
        .unwrap_or_else(|| panic!("scenario {scenario}: no error reported: {runs:#?}"))
        .to_string()
}

#[test]
fn a_killed_rank_makes_its_peer_fail_fast_naming_it() {
    let start = Instant::now();
    let runs = run_ranks("die", 2, &[("DYING_RANK", "1".to_string())], LIMIT);
    let elapsed = start.elapsed();
    assert_eq!(
        runs[1].code, None,
        "rank 1 should have died by SIGKILL: {runs:#?}"
    );
    let msg = survivor_message("die", &runs, 0);
    assert!(
        msg.contains("peer rank(s) 1 stopped"),
        "the message does not name rank 1: {msg}"
    );
    assert!(elapsed < FAILURE_BOUND, "took {elapsed:?}: {msg}");
    eprintln!("{elapsed:?}: {msg}");
}

#[test]
fn a_killed_store_owner_makes_its_peer_fail_fast_naming_it() {
    let start = Instant::now();
    let runs = run_ranks("die", 2, &[("DYING_RANK", "0".to_string())], LIMIT);
    let elapsed = start.elapsed();
    let msg = survivor_message("die", &runs, 1);
    assert!(
        msg.contains("rank 0") && msg.contains("unreachable"),
        "the message does not say the store's owner, rank 0, is gone: {msg}"
    );
    assert!(elapsed < FAILURE_BOUND, "took {elapsed:?}: {msg}");
    eprintln!("{elapsed:?}: {msg}");
}

#[test]
fn a_hanging_rank_times_out_its_peer_naming_it() {
    let start = Instant::now();
    let done = std::env::temp_dir().join(format!("loraplus-dist-hang-{}", std::process::id()));
    let _ = std::fs::remove_file(&done);
    let runs = run_ranks(
        "hang",
        2,
        &[("TEST_DONE_FILE", done.display().to_string())],
        LIMIT,
    );
    let _ = std::fs::remove_file(&done);
    let elapsed = start.elapsed();
    let msg = survivor_message("hang", &runs, 0);
    assert!(
        msg.contains("alive but behind this rank's collective 2: rank 1 at collective 1"),
        "the message should name rank 1 as stuck: {msg}"
    );
    assert!(elapsed < FAILURE_BOUND, "took {elapsed:?}: {msg}");
    eprintln!("{elapsed:?}: {msg}");
}

/// torchrun (from the torch wheel in .venv) launches the ranks: every rank, rank 0 included,
/// joins through the agent's store as a client (`TORCHELASTIC_USE_AGENT_STORE=True`).
#[test]
fn torchrun_ranks_join_through_its_agent_store() {
    let torchrun = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/torchrun");
    assert!(
        torchrun.exists(),
        "{}: not found; `make setup` installs the torch wheel",
        torchrun.display()
    );
    let exe = std::env::current_exe().unwrap();
    let port = common::free_port().to_string();
    let mut cmd = Command::new(&torchrun);
    cmd.args([
        "--nproc-per-node",
        "2",
        "--master-port",
        &port,
        "--no-python",
    ])
    .arg(&exe)
    .args(["worker", "--exact", "--nocapture", "--test-threads=1"])
    .env(SCENARIO, "broadcast")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for var in [
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
    ] {
        cmd.env_remove(var);
    }
    let child = cmd.spawn().expect("starting torchrun");
    let out = common::wait_or_kill(child, LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "torchrun failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    for rank in 0..2 {
        assert!(
            stdout.contains(&format!("rank {rank} agent-store=true")),
            "rank {rank} did not use torchrun's agent store:\n{stdout}\n{stderr}"
        );
    }
}

fn local_launch(scenario: &str, extra: &[(&str, &str)], logs: &Path) -> LocalLaunch {
    let args = ["worker", "--exact", "--nocapture", "--test-threads=1"];
    let mut launch = LocalLaunch::new(
        std::env::current_exe().unwrap(),
        args.iter().map(Into::into).collect(),
        2,
    );
    launch.threads_per_rank = Some(1);
    launch.grace = FAILURE_BOUND;
    launch.log_dir = Some(logs.to_path_buf());
    launch.env = std::iter::once((SCENARIO, scenario))
        .chain(extra.iter().copied())
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    launch
}

/// `launch_local` (what `--nproc-per-node` uses) runs the ranks on loopback and reports the
/// rank that died.
#[test]
fn launch_local_runs_the_ranks_and_names_a_dead_one() {
    let logs = std::env::temp_dir().join(format!("loraplus-dist-launch-{}", std::process::id()));
    launch_local(&local_launch("broadcast", &[], &logs)).expect("two healthy ranks");
    let log0 = std::fs::read_to_string(logs.join("rank0.log")).unwrap();
    assert!(
        log0.contains("rank 0 agent-store=false"),
        "rank 0's log: {log0}"
    );
    let start = Instant::now();
    let err = launch_local(&local_launch("die", &[("DYING_RANK", "1")], &logs))
        .expect_err("rank 1 kills itself")
        .to_string();
    let log0 = std::fs::read_to_string(logs.join("rank0.log")).unwrap();
    let _ = std::fs::remove_dir_all(&logs);
    assert!(
        err.contains("rank 1 of 2 was killed by signal 9"),
        "the launcher should name rank 1: {err}"
    );
    assert!(
        log0.contains("peer rank(s) 1 stopped"),
        "rank 0 should name rank 1 too: {log0}"
    );
    assert!(
        start.elapsed() < FAILURE_BOUND,
        "took {:?}: {err}",
        start.elapsed()
    );
}

#[test]
fn a_missing_peer_fails_group_creation_within_the_timeout() {
    let mut opts = ProcessGroupOptions::new("127.0.0.1", common::free_port(), 0, 2, Backend::Gloo);
    opts.timeout = SHORT_TIMEOUT;
    let start = Instant::now();
    let err = ProcessGroup::new(&opts).expect_err("rank 1 never comes");
    let elapsed = start.elapsed();
    assert!(matches!(err, DistError::Create { .. }), "{err}");
    assert!(elapsed < FAILURE_BOUND, "took {elapsed:?}: {err}");
    eprintln!("{elapsed:?}: {err}");
}

/// World size 1 (a plain run that goes through the same code): every collective is the
/// identity, in this process.
#[test]
fn a_single_rank_group_leaves_tensors_as_they_are() {
    let mut opts = ProcessGroupOptions::new("127.0.0.1", common::free_port(), 0, 1, Backend::Gloo);
    opts.timeout = TIMEOUT;
    let pg = ProcessGroup::new(&opts).expect("a group of one");
    let b = base(1_000, Kind::Float);
    let mut t = [b.copy()];
    pg.allreduce_sum(&mut t).unwrap();
    pg.allreduce_mean(&mut t).unwrap();
    pg.broadcast(&mut t[0], 0).unwrap();
    assert!(t[0].equal(&b));
    let rows = pg.allgather_rows(&b.view([10, 100])).unwrap();
    assert!(rows.equal(&b.view([10, 100])));
    pg.barrier().unwrap();
    let e = pg
        .broadcast(&mut t[0], 1)
        .expect_err("root 1 of 1")
        .to_string();
    assert!(e.contains("root rank 1, expected 0..1"), "{e}");
}

#[test]
fn bad_options_are_refused_before_any_connection() {
    let mut opts = ProcessGroupOptions::new("127.0.0.1", 1, 2, 2, Backend::Gloo);
    let e = ProcessGroup::new(&opts)
        .expect_err("rank 2 of 2")
        .to_string();
    assert!(e.contains("rank is 2, expected 0..2"), "{e}");
    opts.rank = 0;
    opts.timeout = Duration::ZERO;
    let e = ProcessGroup::new(&opts)
        .expect_err("zero timeout")
        .to_string();
    assert!(e.contains("timeout is 0"), "{e}");
}

#[test]
fn the_launcher_environment_is_read_and_checked_by_name() {
    let vars = |pairs: &[(&str, &str)]| {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name: &str| map.get(name).cloned()
    };
    let full = [
        ("RANK", "3"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "node0"),
        ("MASTER_PORT", "29500"),
        ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ("TORCHELASTIC_RESTART_COUNT", "2"),
    ];
    let env = DistEnv::from_lookup(vars(&full)).unwrap();
    assert_eq!(
        env,
        DistEnv {
            rank: 3,
            world_size: 4,
            local_rank: 1,
            local_world_size: Some(2),
            master_addr: "node0".to_string(),
            master_port: 29500,
            use_agent_store: true,
            restart_count: 2,
        }
    );
    assert!(!env.is_store_server());
    let opts = ProcessGroupOptions::from_env(&env, Backend::Gloo);
    assert!(!opts.store_server);
    assert_eq!(opts.prefix, "loraplus/attempt_2");
    assert_eq!(
        opts.gloo_hostname, None,
        "a remote store: c10d picks the interface"
    );

    let plain = DistEnv::from_lookup(vars(
        &full[..2]
            .iter()
            .chain(&full[4..6])
            .copied()
            .collect::<Vec<_>>(),
    ))
    .unwrap();
    assert_eq!(plain.local_rank, 3);
    assert!(!plain.use_agent_store);

    let cases: [(&str, &str, &str); 6] = [
        ("RANK", "4", "RANK: is 4, expected 0..4"),
        ("RANK", "x", "RANK: is \"x\", expected an integer"),
        ("WORLD_SIZE", "0", "WORLD_SIZE: is 0"),
        ("MASTER_PORT", "70000", "MASTER_PORT: is \"70000\""),
        ("LOCAL_RANK", "2", "LOCAL_RANK: is 2, expected 0..2"),
        (
            "TORCHELASTIC_USE_AGENT_STORE",
            "yes",
            "TORCHELASTIC_USE_AGENT_STORE: is \"yes\"",
        ),
    ];
    for (var, value, expected) in cases {
        let mut pairs = full.to_vec();
        pairs.retain(|(k, _)| *k != var);
        pairs.push((var, value));
        let e = DistEnv::from_lookup(vars(&pairs))
            .expect_err(var)
            .to_string();
        assert!(e.contains(expected), "{var}={value}: {e}");
    }
    for var in ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"] {
        let pairs: Vec<_> = full.iter().filter(|(k, _)| *k != var).copied().collect();
        let e = DistEnv::from_lookup(vars(&pairs))
            .expect_err(var)
            .to_string();
        assert!(e.contains(&format!("{var}: not set")), "{e}");
    }
}
