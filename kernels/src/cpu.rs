//! What the machine is: its cache sizes (read at run time) and the GEMM blocking derived from them.
//!
//! Cache sizes come from Linux's sysfs (`/sys/devices/system/cpu/cpu0/cache/index*`), else from
//! CPUID (leaf 4 on Intel, 0x8000001D on AMD), else from conservative defaults. The blocking
//! follows the BLIS analytic model (Low et al., "Analytical modeling is enough for
//! high-performance BLIS", 2016) for our loop order (jr outer, ir inner):
//! - **KC**: for one-panel tiles the B micro-panel (KC × 16) stays in L1 while every A
//!   micro-panel of the row block streams past it: KC·16·4 bytes ≈ half of L1d. The two-panel
//!   AVX-512 tile's B pair cannot share L1d with A at a useful depth, so both stream from L2
//!   and KC is bounded by L2 instead: the pair in an eighth of it (see `Blocking::derive`).
//! - **MC**: the packed A block (MC × KC) stays in L2 while B micro-panels stream through:
//!   about a third of L2 (the rest holds B panels in flight and C tiles).
//! - **NC**: the packed B block (KC × NC) stays in this core's share of L3: about half of it.
//!
//! `VFFN_BLOCKING=kc=K,mc=M,nc=N` (any subset) overrides the derived values (for tuning). The
//! blocking decides the order of the depth sums (KC), so the last bits of a product follow it:
//! the same machine and settings give the same bits, another blocking may differ in the last
//! place. Results never depend on the thread count.

use std::sync::OnceLock;

use crate::microkernel::KernelKind;

/// Data cache sizes in bytes, per core (L3: this core's share when the CPU says how many share it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSizes {
    pub l1d: usize,
    pub l2: usize,
    pub l3: usize,
    /// Where the sizes came from: "sysfs", "cpuid" or "default".
    pub source: &'static str,
}

/// Sizes assumed when the machine does not say (a Zen 3 core's: the smallest we target).
const DEFAULT_CACHES: CacheSizes =
    CacheSizes { l1d: 32 << 10, l2: 512 << 10, l3: 4 << 20, source: "default" };

/// The cache sizes of this machine (read once per process).
pub fn cache_sizes() -> CacheSizes {
    static SIZES: OnceLock<CacheSizes> = OnceLock::new();
    *SIZES.get_or_init(|| from_sysfs().or_else(from_cpuid).unwrap_or(DEFAULT_CACHES))
}

/// `"48K"` → 49152, `"2048K"`, `"32M"`, `"1024"` (bytes).
fn parse_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let (num, mult) = match t.chars().last()? {
        'K' | 'k' => (&t[..t.len() - 1], 1usize << 10),
        'M' | 'm' => (&t[..t.len() - 1], 1 << 20),
        'G' | 'g' => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.trim().parse::<usize>().ok()?.checked_mul(mult)
}

/// Number of CPUs in a sysfs `shared_cpu_list` such as `0-3,8-11` or `0`.
fn count_cpu_list(text: &str) -> Option<usize> {
    let mut n = 0usize;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => {
                b.trim().parse::<usize>().ok()?.checked_sub(a.trim().parse().ok()?)? + 1
            }
            None => {
                part.trim().parse::<usize>().ok()?;
                1
            }
        };
    }
    (n > 0).then_some(n)
}

/// Combines (level, type, size, sharing CPUs) entries into per-core sizes.
fn from_entries(
    entries: &[(u32, String, usize, usize)],
    source: &'static str,
) -> Option<CacheSizes> {
    let find = |level: u32| {
        entries
            .iter()
            .find(|(l, ty, _, _)| *l == level && (ty == "Data" || ty == "Unified"))
            .map(|&(_, _, size, shared)| (size, shared.max(1)))
    };
    let (l1d, _) = find(1)?;
    let (l2, _) = find(2)?;
    // L3 per core: the CPU's L3 over the CPUs sharing it (at least L2 when there is none).
    let l3 = find(3).map_or(l2, |(size, shared)| size / shared).max(l2);
    Some(CacheSizes { l1d, l2, l3, source })
}

fn from_sysfs() -> Option<CacheSizes> {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    let mut entries = Vec::new();
    for index in 0..16 {
        let base = dir.join(format!("index{index}"));
        let Ok(level) = std::fs::read_to_string(base.join("level")) else { continue };
        let read = |f: &str| std::fs::read_to_string(base.join(f)).ok();
        let level: u32 = level.trim().parse().ok()?;
        let ty = read("type")?.trim().to_string();
        let size = parse_size(&read("size")?)?;
        let shared = read("shared_cpu_list").and_then(|s| count_cpu_list(&s)).unwrap_or(1);
        entries.push((level, ty, size, shared));
    }
    from_entries(&entries, "sysfs")
}

#[cfg(target_arch = "x86_64")]
#[allow(unused_unsafe)] // CPUID intrinsics are safe functions from Rust 1.89 on, unsafe before.
fn from_cpuid() -> Option<CacheSizes> {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // SAFETY: CPUID exists on every x86_64 CPU.
    let vendor = unsafe { __cpuid(0) };
    let amd = vendor.ebx == 0x6874_7541; // "Auth"enticAMD
    let leaf = if amd { 0x8000_001D } else { 4 };
    // SAFETY: as above; leaf 0x8000_0000 reports the highest extended leaf.
    if amd && unsafe { __cpuid(0x8000_0000) }.eax < leaf {
        return None;
    }
    let mut entries = Vec::new();
    for sub in 0..16 {
        // SAFETY: as above; deterministic cache parameter leaf (4 or 0x8000001D).
        let r = unsafe { __cpuid_count(leaf, sub) };
        let ty = match r.eax & 0x1F {
            0 => break,
            1 => "Data",
            2 => continue,
            _ => "Unified",
        };
        let level = (r.eax >> 5) & 0x7;
        let shared = (((r.eax >> 14) & 0xFFF) + 1) as usize;
        let ways = ((r.ebx >> 22) & 0x3FF) as usize + 1;
        let parts = ((r.ebx >> 12) & 0x3FF) as usize + 1;
        let line = (r.ebx & 0xFFF) as usize + 1;
        let sets = r.ecx as usize + 1;
        entries.push((level, ty.to_string(), ways * parts * line * sets, shared));
    }
    from_entries(&entries, "cpuid")
}

#[cfg(not(target_arch = "x86_64"))]
fn from_cpuid() -> Option<CacheSizes> {
    None
}

/// GEMM cache blocking: depth block, row block of packed A, column block of packed B.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocking {
    pub kc: usize,
    pub mc: usize,
    pub nc: usize,
}

/// Largest KC any blocking uses (sizes the per-thread B panel copies).
pub const KC_MAX: usize = 1024;

impl Blocking {
    /// The analytic blocking for `kind` on caches `c` (see the module doc).
    pub fn derive(kind: KernelKind, c: CacheSizes) -> Blocking {
        let (mr, nr) = (kind.mr(), kind.nr());
        let kc = if nr > crate::microkernel::NR {
            // Two-panel tiles: B's pair and A's micro-panel together overflow L1d at any useful
            // depth (32 × 384 × 4 = 48 KiB for B alone), so both stream from L2, which feeds
            // them easily (2.9 lines per 14 FMA cycles). The bound is then L2: B's pair in an
            // eighth of it. Deeper blocks mean fewer passes over C (one at k ≤ 1024: C written,
            // never re-read). Measured at 1024³ one thread on Zen 5 (1 MiB L2): KC 1024 ran
            // 1.08–1.10× KC 384 in alternating rounds; on the Xeon earlier, 384 beat 192.
            c.l2 / 8 / (nr * 4)
        } else {
            // One-panel tiles: B's micro-panel in half of L1d, A's micro-panel beside it (Zen
            // 3's hand-tuned 256 at 32 KiB).
            c.l1d / 2 / (nr * 4)
        };
        let kc = (kc / 16 * 16).clamp(64, KC_MAX);
        let mc = (c.l2 / 3 / (kc * 4)) / mr * mr;
        let mc = mc.clamp(4 * mr, 1024 / mr * mr);
        let nc = (c.l3 / 2 / (kc * 4)) / nr * nr;
        let nc = nc.clamp(8 * nr, 8192);
        Blocking { kc, mc, nc }
    }

    /// `self` with the `kc=..,mc=..,nc=..` settings of `spec` applied (unknown keys or bad
    /// numbers are reported).
    pub fn with_overrides(self, spec: &str) -> Result<Blocking, String> {
        let mut b = self;
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) =
                item.split_once('=').ok_or_else(|| format!("`{item}` is not key=value"))?;
            let v: usize = value
                .trim()
                .parse()
                .ok()
                .filter(|&v| v >= 1)
                .ok_or_else(|| format!("`{item}`: not a positive whole number"))?;
            match key.trim() {
                "kc" => b.kc = v.min(KC_MAX),
                "mc" => b.mc = v,
                "nc" => b.nc = v,
                other => return Err(format!("unknown key `{other}` (kc, mc, nc)")),
            }
        }
        Ok(b)
    }
}

/// The blocking the GEMM uses with `kind` on this machine: derived from [`cache_sizes`], then
/// `VFFN_BLOCKING` applied (a malformed value is reported once on stderr and ignored).
pub fn blocking(kind: KernelKind) -> Blocking {
    static CHOSEN: OnceLock<[Blocking; 3]> = OnceLock::new();
    let all = CHOSEN.get_or_init(|| {
        let caches = cache_sizes();
        let env = std::env::var("VFFN_BLOCKING").ok();
        KernelKind::ALL.map(|k| {
            let derived = Blocking::derive(k, caches);
            match env.as_deref().map(|s| derived.with_overrides(s)) {
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    eprintln!("warning: VFFN_BLOCKING ignored: {e}");
                    derived
                }
                None => derived,
            }
        })
    });
    all[KernelKind::ALL.iter().position(|&k| k == kind).expect("every kind is listed")]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_cpu_lists_parse() {
        assert_eq!(parse_size("48K\n"), Some(48 << 10));
        assert_eq!(parse_size("2048K"), Some(2 << 20));
        assert_eq!(parse_size("32M"), Some(32 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(count_cpu_list("0-3,8-11\n"), Some(8));
        assert_eq!(count_cpu_list("5"), Some(1));
        assert_eq!(count_cpu_list("3-1"), None);
    }

    #[test]
    fn the_l3_share_is_per_core_and_never_below_l2() {
        let e = |l, t: &str, s, sh| (l, t.to_string(), s, sh);
        let c = from_entries(
            &[
                e(1, "Data", 48 << 10, 1),
                e(1, "Instruction", 32 << 10, 1),
                e(2, "Unified", 2 << 20, 1),
                e(3, "Unified", 64 << 20, 32),
            ],
            "sysfs",
        )
        .unwrap();
        assert_eq!((c.l1d, c.l2, c.l3), (48 << 10, 2 << 20, 2 << 20));
        assert!(from_entries(&[e(2, "Unified", 1 << 20, 1)], "sysfs").is_none());
    }

    /// Zen 3 (32 KiB L1d, 512 KiB L2) with the AVX2 6 × 16 tile gives the KC = 256 that was tuned
    /// there by hand; the two-panel AVX-512 tile, fed from L2, takes the deepest block (1024, the
    /// measured best on Zen 5's 1 MiB L2) with the A block in a third of L2.
    #[test]
    fn the_analytic_blocking_matches_the_hand_tuned_zen3_kc() {
        let zen3 = CacheSizes { l1d: 32 << 10, l2: 512 << 10, l3: 4 << 20, source: "test" };
        let b = Blocking::derive(KernelKind::Avx2, zen3);
        assert_eq!(b.kc, 256);
        assert!(b.mc.is_multiple_of(6) && b.mc * b.kc * 4 <= zen3.l2 / 2);
        for l2 in [1 << 20, 2 << 20] {
            let zen5_or_xeon = CacheSizes { l1d: 48 << 10, l2, l3: 5 << 20, source: "test" };
            let b = Blocking::derive(KernelKind::Avx512, zen5_or_xeon);
            assert_eq!(b.kc, 1024);
            assert!(b.mc.is_multiple_of(14) && b.nc.is_multiple_of(32));
            assert!(b.mc * b.kc * 4 <= l2 / 3 && 32 * b.kc * 4 <= l2 / 8);
        }
        // A smaller L2 gives a shallower block.
        let half = CacheSizes { l1d: 48 << 10, l2: 512 << 10, l3: 5 << 20, source: "test" };
        assert_eq!(Blocking::derive(KernelKind::Avx512, half).kc, 512);
    }

    #[test]
    fn overrides_apply_and_reject_bad_input() {
        let b = Blocking { kc: 256, mc: 144, nc: 4096 };
        assert_eq!(
            b.with_overrides("kc=128, nc=512").unwrap(),
            Blocking { kc: 128, mc: 144, nc: 512 }
        );
        assert!(b.with_overrides("kc=0").is_err());
        assert!(b.with_overrides("xc=4").is_err());
        assert!(b.with_overrides("kc").is_err());
    }

    #[test]
    fn this_machine_reports_plausible_caches() {
        let c = cache_sizes();
        assert!(c.l1d >= 8 << 10 && c.l2 >= c.l1d && c.l3 >= c.l2, "{c:?}");
    }
}
