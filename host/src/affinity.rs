//! CPU affinity: the CPUs a thread may run on, the CPUs the data plane
//! leaves over, and pinning a thread to them.
//!
//! `palisade serve` pins its data-plane loops one per CPU (from
//! `node.cores`, with [`pin_current_thread`]). Every other thread of the
//! node (the control thread with its raft log fsync, the peer transport,
//! the admin endpoint) is pinned with [`pin_current_thread`] or [`pin_thread`] to the
//! [`spare_cpus`] when there are any, so that it never preempts a core
//! that serves requests. A thread inherits its creator's mask, so threads
//! spawned by a pinned thread are pinned too.
//!
//! What it never does: decide where the data plane runs, read the
//! topology, or pin a thread that did not ask or was not
//! named by its caller.
//!
//! CPU lists are ascending CPU ids, as the kernel numbers them.
//!
//! ```
//! use palisade_host::affinity::{allowed_cpus, cpu_list, spare_cpus};
//!
//! let allowed = allowed_cpus()?;
//! assert!(!allowed.is_empty());
//! // With the data plane on the first allowed CPU, the rest is spare.
//! let spare = spare_cpus(&allowed, &allowed[..1]);
//! assert_eq!(spare, allowed[1..]);
//! assert_eq!(cpu_list(&[0, 1, 2, 5]), "0-2,5");
//! # Ok::<(), palisade_host::affinity::AffinityError>(())
//! ```

use std::fmt;

use rustix::thread::{gettid, sched_getaffinity, sched_setaffinity, CpuSet, Pid};

/// Why an affinity call failed. The kernel's answer, passed on: the caller
/// decides whether to go on unpinned.
#[derive(Debug, thiserror::Error)]
pub enum AffinityError {
    /// The kernel would not tell a thread's mask (the thread is gone, or a
    /// seccomp policy forbids the call). The host's fault.
    #[error("reading the CPU affinity of thread {tid}")]
    Read {
        /// The thread.
        tid: Tid,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused the mask: none of its CPUs is online or allowed
    /// by the cgroup cpuset, the thread is gone, or the process may not
    /// change it. The host's or the operator's fault.
    #[error("pinning thread {tid} to CPUs {}", cpu_list(cpus))]
    Pin {
        /// The thread.
        tid: Tid,
        /// The CPUs asked for.
        cpus: Vec<usize>,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// A CPU id beyond what an affinity mask holds. The caller's (a CPU
    /// list from config that was not checked).
    #[error("CPU {cpu} is beyond the largest CPU id a mask holds ({})", CpuSet::MAX_CPU - 1)]
    OutOfRange {
        /// The CPU id.
        cpu: usize,
    },
}

/// A kernel thread id (what `/proc/self/task/` lists), as opposed to
/// [`std::thread::ThreadId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tid(Pid);

impl Tid {
    /// The id as the kernel prints it.
    #[must_use]
    pub fn as_raw(self) -> i32 {
        self.0.as_raw_nonzero().get()
    }
}

impl fmt::Display for Tid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_raw())
    }
}

/// The calling thread's kernel id. Call it on the thread itself (a thread
/// that spawns another learns the new one's id from it).
#[must_use]
pub fn current_tid() -> Tid {
    Tid(gettid())
}

/// The CPUs the calling thread may run on, ascending: until a thread
/// narrows its own mask, the process's (`taskset`, systemd's
/// `CPUAffinity=`, a cgroup cpuset). The kernel keeps only online CPUs in
/// a mask, so every CPU listed is online.
///
/// # Errors
///
/// [`AffinityError::Read`] if the kernel refuses.
pub fn allowed_cpus() -> Result<Vec<usize>, AffinityError> {
    let set = sched_getaffinity(None).map_err(|e| AffinityError::Read {
        tid: current_tid(),
        source: e.into(),
    })?;
    let cpus: Vec<usize> = (0..CpuSet::MAX_CPU)
        .filter(|&cpu| set.is_set(cpu))
        .collect();
    debug_assert_eq!(cpus.len(), set.count() as usize);
    Ok(cpus)
}

/// What is left of `allowed` once the data plane took `data_plane`:
/// the CPUs every other thread of the node may run on without preempting
/// a data-plane core. Empty when the data plane uses every allowed CPU
/// (`node.cores = "all"`, or one allowed CPU). Ascending, like `allowed`.
#[must_use]
pub fn spare_cpus(allowed: &[usize], data_plane: &[usize]) -> Vec<usize> {
    allowed
        .iter()
        .copied()
        .filter(|cpu| !data_plane.contains(cpu))
        .collect()
}

fn is_ascending(cpus: &[usize]) -> bool {
    cpus.windows(2).all(|w| w[0] < w[1])
}

fn cpu_set(cpus: &[usize]) -> Result<CpuSet, AffinityError> {
    assert!(!cpus.is_empty(), "a thread must be allowed some CPU");
    let mut set = CpuSet::new();
    for &cpu in cpus {
        if cpu >= CpuSet::MAX_CPU {
            return Err(AffinityError::OutOfRange { cpu });
        }
        set.set(cpu);
    }
    Ok(set)
}

/// Pins the calling thread to `cpus`. Threads it spawns afterwards inherit
/// the mask. Call it on the thread to be pinned, before it spawns threads
/// that should share its CPUs.
///
/// # Errors
///
/// [`AffinityError::OutOfRange`] for a CPU id no mask holds,
/// [`AffinityError::Pin`] if the kernel refuses; the thread's mask is then
/// unchanged.
///
/// # Panics
///
/// If `cpus` is empty (a thread must be allowed some CPU; a bug).
pub fn pin_current_thread(cpus: &[usize]) -> Result<(), AffinityError> {
    pin(None, current_tid(), cpus)
}

/// Pins the thread `tid` of this process to `cpus`, for a thread that was
/// spawned before its CPUs were known. Threads it spawns afterwards
/// inherit the mask.
///
/// # Errors
///
/// As [`pin_current_thread`]; also [`AffinityError::Pin`] if the thread
/// has ended.
///
/// # Panics
///
/// If `cpus` is empty (a bug).
pub fn pin_thread(tid: Tid, cpus: &[usize]) -> Result<(), AffinityError> {
    pin(Some(tid.0), tid, cpus)
}

fn pin(target: Option<Pid>, tid: Tid, cpus: &[usize]) -> Result<(), AffinityError> {
    let set = cpu_set(cpus)?;
    sched_setaffinity(target, &set).map_err(|e| AffinityError::Pin {
        tid,
        cpus: cpus.to_vec(),
        source: e.into(),
    })
}

/// `cpus` in the kernel's list format (`0-2,5`), as `taskset -c` takes and
/// `/proc/<pid>/status` (`Cpus_allowed_list`) prints it. `cpus` must be
/// ascending.
#[must_use]
pub fn cpu_list(cpus: &[usize]) -> String {
    debug_assert!(is_ascending(cpus), "{cpus:?} is not ascending");
    let mut out = String::new();
    let mut rest = cpus;
    while let Some((&first, tail)) = rest.split_first() {
        let run = tail
            .iter()
            .zip(1..)
            .take_while(|&(&cpu, step)| cpu == first + step)
            .count();
        if !out.is_empty() {
            out.push(',');
        }
        if run == 0 {
            out.push_str(&first.to_string());
        } else {
            out.push_str(&format!("{first}-{}", first + run));
        }
        rest = &tail[run..];
    }
    out
}

/// Reads the kernel's list format (`0-2,5`; `Cpus_allowed_list` in
/// `/proc/<pid>/task/<tid>/status`, `/sys/devices/system/cpu/online`),
/// ascending. `None` if `text` is not in that format.
#[must_use]
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let text = text.trim();
    let mut cpus = Vec::new();
    if text.is_empty() {
        return Some(cpus);
    }
    for part in text.split(',') {
        let (first, last): (usize, usize) = match part.split_once('-') {
            Some((first, last)) => (first.parse().ok()?, last.parse().ok()?),
            None => {
                let cpu = part.parse().ok()?;
                (cpu, cpu)
            }
        };
        if first > last {
            return None;
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spare_set_is_what_the_data_plane_leaves() {
        assert_eq!(spare_cpus(&[0, 1, 2, 3], &[0, 1]), vec![2, 3]);
        assert_eq!(spare_cpus(&[0, 1, 2, 3], &[1, 3]), vec![0, 2]);
        // `cores = "all"`: nothing left.
        assert_eq!(spare_cpus(&[0, 1], &[0, 1]), Vec::<usize>::new());
        // `taskset -c 0` with one data-plane core.
        assert_eq!(spare_cpus(&[0], &[0]), Vec::<usize>::new());
        // Only the allowed CPUs are spare, never one outside the mask.
        assert_eq!(spare_cpus(&[2, 3, 4], &[3, 7]), vec![2, 4]);
        assert_eq!(spare_cpus(&[], &[0]), Vec::<usize>::new());
    }

    #[test]
    fn cpu_lists_round_trip_in_the_kernel_format() {
        assert_eq!(cpu_list(&[]), "");
        assert_eq!(cpu_list(&[0]), "0");
        assert_eq!(cpu_list(&[0, 1, 2, 5]), "0-2,5");
        assert_eq!(cpu_list(&[1, 3, 4, 5, 7, 8]), "1,3-5,7-8");
        for cpus in [vec![], vec![0], vec![0, 1, 2, 5], vec![1, 3, 4, 5, 7, 8]] {
            assert_eq!(parse_cpu_list(&cpu_list(&cpus)), Some(cpus));
        }
        assert_eq!(parse_cpu_list("0-1,3\n"), Some(vec![0, 1, 3]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
    }

    #[test]
    fn a_thread_pins_itself_and_its_children_inherit() {
        let allowed = allowed_cpus().expect("mask");
        assert!(!allowed.is_empty());
        let last = *allowed.last().expect("non-empty");
        // On a thread of its own: the test harness's threads stay as they are.
        std::thread::spawn(move || {
            pin_current_thread(&[last]).expect("pin");
            assert_eq!(allowed_cpus().expect("mask"), vec![last]);
            let child = std::thread::spawn(|| allowed_cpus().expect("mask"));
            assert_eq!(child.join().expect("child"), vec![last]);
        })
        .join()
        .expect("pinned thread");
    }

    #[test]
    fn another_thread_is_pinned_by_its_id() {
        let allowed = allowed_cpus().expect("mask");
        let first = allowed[0];
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tid_tx.send(current_tid()).expect("send");
            go_rx.recv().expect("go");
            allowed_cpus().expect("mask")
        });
        let tid = tid_rx.recv().expect("tid");
        assert_ne!(tid, current_tid());
        pin_thread(tid, &[first]).expect("pin");
        go_tx.send(()).expect("go");
        assert_eq!(thread.join().expect("thread"), vec![first]);
    }

    #[test]
    fn a_bad_mask_is_an_error_not_a_change() {
        std::thread::spawn(|| {
            let before = allowed_cpus().expect("mask");
            assert!(matches!(
                pin_current_thread(&[CpuSet::MAX_CPU]),
                Err(AffinityError::OutOfRange { .. })
            ));
            // CPU MAX_CPU - 1 is not online on a test machine: refused.
            let refused = pin_current_thread(&[CpuSet::MAX_CPU - 1]);
            assert!(
                matches!(refused, Err(AffinityError::Pin { .. })),
                "{refused:?}"
            );
            assert_eq!(allowed_cpus().expect("mask"), before);
        })
        .join()
        .expect("thread");
    }
}
