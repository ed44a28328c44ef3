//! Memory hints for the large tables a daemon reads at random: huge pages
//! for their allocation, and a prefetch of the line a lookup will read.

use std::mem::MaybeUninit;

/// A transparent huge page on x86_64 and arm64 Linux with 4 KiB base pages.
pub const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the whole 2 MiB pages inside `region` with
/// transparent huge pages when they are first touched (`MADV_HUGEPAGE`):
/// one TLB entry instead of 512 for memory read at random, which in a VM
/// also spares each miss a nested page walk. Call it before writing the
/// region. A hint only: the kernel falls back to small pages when it has
/// no huge page at hand, and ignores it where transparent huge pages are
/// off (`/sys/kernel/mm/transparent_hugepage/enabled` = `never`). Returns
/// the bytes advised (0 if the region holds no whole huge page or the
/// kernel refused).
pub fn advise_huge_pages<T>(region: &mut [MaybeUninit<T>]) -> usize {
    let start = region.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(region);
    let first = start.next_multiple_of(HUGE_PAGE);
    let last = end / HUGE_PAGE * HUGE_PAGE;
    if last <= first {
        return 0;
    }
    #[allow(unsafe_code)]
    // SAFETY: MADV_HUGEPAGE changes how the kernel backs the pages of the
    // range, never what they hold or whether they are mapped; the range lies
    // inside `region`, which this function borrows mutably (so nothing else
    // uses it meanwhile) and which is mapped memory owned by the caller.
    let advised = unsafe {
        rustix::mm::madvise(
            first as *mut std::ffi::c_void,
            last - first,
            rustix::mm::Advice::LinuxHugepage,
        )
    };
    if advised.is_ok() {
        last - first
    } else {
        0
    }
}

/// Starts loading the cache line that holds `value` into every cache level
/// (`PREFETCHT0`), so that a lookup issued a little later finds it there:
/// a batch of lookups at random then waits for their misses together
/// instead of one after another. A hint only; a no-op off x86_64.
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: PREFETCHT0 never faults and changes nothing the program can
    // observe; the pointer comes from a live reference. SSE, which the
    // intrinsic requires, is part of the x86_64 baseline.
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(value).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_region_is_advised_and_keeps_what_is_written() {
        let len = 3 * HUGE_PAGE / 8;
        let mut values: Vec<u64> = Vec::with_capacity(len);
        let advised = advise_huge_pages(values.spare_capacity_mut());
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if thp.contains("[never]") || thp.is_empty() {
            eprintln!("transparent huge pages are off here: the advice may be refused");
        } else {
            // 3 MiB hold at least one whole aligned 2 MiB page.
            assert!(advised >= HUGE_PAGE, "advised {advised} bytes");
            assert_eq!(advised % HUGE_PAGE, 0);
        }
        values.extend((0..len as u64).map(|i| i * 7));
        assert!(values.iter().enumerate().all(|(i, &v)| v == i as u64 * 7));
    }

    #[test]
    fn a_prefetch_changes_nothing() {
        let values: Vec<u64> = (0..1024).collect();
        for value in values.iter().rev() {
            prefetch(value);
        }
        prefetch(&values);
        assert!(values.iter().enumerate().all(|(i, &v)| v == i as u64));
    }

    #[test]
    fn a_small_region_is_left_alone() {
        let mut values: Vec<u8> = Vec::with_capacity(HUGE_PAGE / 2);
        assert_eq!(advise_huge_pages(values.spare_capacity_mut()), 0);
        let mut none: Vec<u64> = Vec::new();
        assert_eq!(advise_huge_pages(none.spare_capacity_mut()), 0);
    }
}
