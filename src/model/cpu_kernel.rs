//! Which instruction set the forward's kernels run on: the best one this CPU has (AVX-512,
//! AVX2 + FMA, or portable Rust), or the one the `TYR_KERNEL` test hook forces.
//!
//! Every kernel class gives the same bits (see `sgemm.rs` and `llama_kernels.rs`), so the choice
//! changes speed only; it is still one choice per process, made once, so that a forward never
//! mixes classes and a comparison (`TYR_KERNEL=avx2 tyr bench forward`) measures what it says.
//!
//! `TYR_KERNEL` takes `avx512`, `avx2` or `portable` (or `auto`, the same as unset). An unknown
//! value, or a class this CPU cannot run, is an error from [`kernel_from_env`], which the `tyr`
//! binary calls before doing anything; library code that meets such a value without having been
//! checked ([`kernel`]) logs a warning and runs the best class instead (it must not panic).

use std::sync::OnceLock;

/// The environment variable that forces a kernel class.
pub const KERNEL_ENV: &str = "TYR_KERNEL";

/// The instruction set of the forward's kernels.
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelClass {
    /// Plain Rust, built for the crate's baseline target.
    Portable,
    /// AVX2 + FMA (256-bit vectors).
    Avx2,
    /// AVX-512F (512-bit vectors, 32 registers), with AVX2 + FMA.
    Avx512,
}

impl KernelClass {
    /// Every class, slowest first.
    pub const ALL: [KernelClass; 3] = [
        KernelClass::Portable,
        KernelClass::Avx2,
        KernelClass::Avx512,
    ];

    /// The name `TYR_KERNEL` and `tyr bench` use.
    pub fn name(self) -> &'static str {
        match self {
            KernelClass::Portable => "portable",
            KernelClass::Avx2 => "avx2",
            KernelClass::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the class (std caches the CPUID answers).
    pub fn supported(self) -> bool {
        match self {
            KernelClass::Portable => true,
            #[cfg(target_arch = "x86_64")]
            KernelClass::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            KernelClass::Avx512 => {
                KernelClass::Avx2.supported() && std::arch::is_x86_feature_detected!("avx512f")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest class this CPU runs.
    pub fn best() -> Self {
        KernelClass::ALL
            .into_iter()
            .rev()
            .find(|k| k.supported())
            .unwrap_or(KernelClass::Portable)
    }

    /// The classes this CPU runs, slowest first (what the cross-kernel tests compare).
    pub fn available() -> Vec<Self> {
        KernelClass::ALL
            .into_iter()
            .filter(|k| k.supported())
            .collect()
    }

    /// Parses a `TYR_KERNEL` value: a class this CPU runs, or `auto`/empty for the best one.
    pub fn parse(value: &str) -> crate::Result<Self> {
        let wanted = match value.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => return Ok(KernelClass::best()),
            "portable" => KernelClass::Portable,
            "avx2" => KernelClass::Avx2,
            "avx512" => KernelClass::Avx512,
            _ => {
                return Err(crate::Error::CpuKernel {
                    value: value.to_string(),
                    reason: "unknown kernel; use avx512, avx2, portable or auto".into(),
                });
            }
        };
        if !wanted.supported() {
            let runs: Vec<&str> = KernelClass::available()
                .into_iter()
                .map(KernelClass::name)
                .collect();
            return Err(crate::Error::CpuKernel {
                value: value.to_string(),
                reason: format!(
                    "this CPU cannot run it (it runs {}); unset {KERNEL_ENV} for the best",
                    runs.join(", ")
                ),
            });
        }
        Ok(wanted)
    }
}

/// The class `TYR_KERNEL` asks for (the best one when unset), or why it cannot be used.
pub fn kernel_from_env() -> crate::Result<KernelClass> {
    match std::env::var(KERNEL_ENV) {
        Ok(v) => KernelClass::parse(&v),
        Err(std::env::VarError::NotPresent) => Ok(KernelClass::best()),
        Err(std::env::VarError::NotUnicode(v)) => Err(crate::Error::CpuKernel {
            value: v.to_string_lossy().into_owned(),
            reason: "not valid UTF-8".into(),
        }),
    }
}

/// The class every kernel of this process runs, chosen on first use.
#[inline]
pub fn kernel() -> KernelClass {
    static CHOSEN: OnceLock<KernelClass> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        kernel_from_env().unwrap_or_else(|e| {
            let best = KernelClass::best();
            tracing::warn!("{e:#}; running the {} kernels", best.name());
            best
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_to_their_class_when_the_cpu_runs_it() {
        for k in KernelClass::ALL {
            let parsed = KernelClass::parse(k.name());
            assert_eq!(parsed.is_ok(), k.supported(), "{}", k.name());
            if let Ok(p) = parsed {
                assert_eq!(p, k);
            }
        }
        assert_eq!(
            KernelClass::parse(" AVX2 ").ok(),
            KernelClass::parse("avx2").ok()
        );
        assert_eq!(KernelClass::parse("auto").unwrap(), KernelClass::best());
        assert_eq!(KernelClass::parse("").unwrap(), KernelClass::best());
    }

    #[test]
    fn an_unknown_kernel_is_an_error_naming_the_value_and_the_choices() {
        let e = KernelClass::parse("avx1024").unwrap_err().to_string();
        assert!(e.contains("avx1024") && e.contains("portable"), "{e}");
    }

    #[test]
    fn the_portable_class_always_runs_and_the_best_is_available() {
        assert!(KernelClass::Portable.supported());
        let avail = KernelClass::available();
        assert_eq!(avail[0], KernelClass::Portable);
        assert_eq!(avail.last().copied(), Some(KernelClass::best()));
    }
}
