//! The Slurm commands tyr runs, and how it reads their answers: `sbatch --parsable` to submit,
//! `scontrol show job -o` (then `sacct`) to ask how a job stands. Nothing here keeps state.

use std::path::Path;
use std::process::Command;

/// How a job stands, as far as tyr cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Pending, running, completing, suspended or requeued: wait.
    Alive(String),
    /// Over, with Slurm's state name (`COMPLETED`, `CANCELLED`, `TIMEOUT`, `PREEMPTED`, …).
    Ended(String),
    /// Slurm could not be asked right now (controller unreachable): ask again later.
    Unknown(String),
}

/// Slurm's job state names that mean the job is not over yet.
const ALIVE: &[&str] = &[
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "RESV_DEL_HOLD",
    "STOPPED",
];

/// Classifies a state name as printed by `scontrol` or `sacct` (`CANCELLED by 0` → CANCELLED).
pub fn classify(state: &str) -> JobState {
    let name = state
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_end_matches('+')
        .to_ascii_uppercase();
    if name.is_empty() {
        JobState::Unknown("empty state".into())
    } else if ALIVE.contains(&name.as_str()) {
        JobState::Alive(name)
    } else {
        JobState::Ended(name)
    }
}

/// The job id in `sbatch --parsable` output (`1234` or `1234;cluster`).
pub fn parse_job_id(stdout: &str) -> Option<String> {
    let id = stdout.trim().split(';').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit() || c == '_')).then(|| id.to_string())
}

/// `JobState=…` in one line of `scontrol show job -o`.
pub fn scontrol_state(line: &str) -> Option<&str> {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("JobState="))
}

/// Runs a Slurm command; `Err` carries what went wrong in words.
pub fn run(program: &str, args: &[String]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        format!("cannot run `{program}`: {e} (is Slurm's client installed and on PATH?)")
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(if err.is_empty() {
            format!("`{program}` exited with {}", out.status)
        } else {
            err
        })
    }
}

/// The most CPUs any node of `partition` (else of every partition) has, from `sinfo`. Slurm
/// accepts a job asking for more and leaves it pending forever (reason `PartitionConfig`), so
/// the executor refuses such a job itself.
pub fn max_cpus_per_node(partition: Option<&str>) -> Result<u32, String> {
    let mut args = vec!["-h".to_string(), "-o".to_string(), "%c".to_string()];
    if let Some(p) = partition {
        args.extend(["-p".to_string(), p.to_string()]);
    }
    let out = run("sinfo", &args)?;
    parse_max_cpus(&out).ok_or_else(|| format!("sinfo listed no nodes: {out:?}"))
}

/// The largest of `sinfo -o %c`'s lines ("2", "64", "8+" for a group of unequal nodes).
pub fn parse_max_cpus(out: &str) -> Option<u32> {
    out.lines()
        .filter_map(|l| {
            let digits: String = l.trim().chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        })
        .max()
}

/// Submits `script` with `args` before it; returns the job id.
pub fn sbatch(args: &[String], script: &Path) -> Result<String, String> {
    let mut all = vec!["--parsable".to_string()];
    all.extend(args.iter().cloned());
    all.push(script.display().to_string());
    let out = run("sbatch", &all)?;
    parse_job_id(&out).ok_or_else(|| format!("sbatch printed no job id: {out:?}"))
}

/// How job `id` stands: `scontrol show job`, then `sacct` once the controller has forgotten it.
pub fn state(id: &str) -> JobState {
    match run(
        "scontrol",
        &["show".into(), "job".into(), "-o".into(), id.into()],
    ) {
        Ok(out) => match out.lines().find_map(scontrol_state) {
            Some(s) => classify(s),
            None => JobState::Unknown(format!("scontrol printed no JobState: {out:?}")),
        },
        Err(e) if e.contains("Invalid job id") => sacct_state(id),
        Err(e) => JobState::Unknown(e),
    }
}

fn sacct_state(id: &str) -> JobState {
    let args: Vec<String> = ["-n", "-X", "-P", "-o", "State", "-j", id]
        .iter()
        .map(|s| s.to_string())
        .collect();
    match run("sacct", &args) {
        Ok(out) => match out.lines().map(str::trim).find(|l| !l.is_empty()) {
            Some(s) => classify(s),
            None => JobState::Ended("UNKNOWN (no longer known to Slurm)".into()),
        },
        // No accounting database: the job is over and Slurm no longer says how.
        Err(_) => JobState::Ended("UNKNOWN (no longer known to Slurm)".into()),
    }
}

/// Quotes `s` for a POSIX shell script.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_that_are_not_over_are_alive() {
        assert_eq!(classify("RUNNING"), JobState::Alive("RUNNING".into()));
        assert_eq!(classify("PENDING"), JobState::Alive("PENDING".into()));
        assert_eq!(
            classify("CANCELLED by 0"),
            JobState::Ended("CANCELLED".into())
        );
        assert_eq!(classify("TIMEOUT"), JobState::Ended("TIMEOUT".into()));
        assert_eq!(classify("PREEMPTED"), JobState::Ended("PREEMPTED".into()));
        assert!(matches!(classify(""), JobState::Unknown(_)));
    }

    #[test]
    fn parsable_output_gives_the_job_id() {
        assert_eq!(parse_job_id("42\n").as_deref(), Some("42"));
        assert_eq!(parse_job_id("42;tyrlocal\n").as_deref(), Some("42"));
        assert_eq!(parse_job_id("Submitted batch job 42"), None);
        assert_eq!(parse_job_id(""), None);
    }

    #[test]
    fn scontrol_one_line_output_gives_the_state() {
        let line = "JobId=7 JobName=x UserId=root(0) JobState=CANCELLED Reason=None ExitCode=0:15";
        assert_eq!(scontrol_state(line), Some("CANCELLED"));
    }

    #[test]
    fn sinfo_cpu_counts_give_the_largest_node() {
        assert_eq!(parse_max_cpus("2\n64\n8+\n"), Some(64));
        assert_eq!(parse_max_cpus(""), None);
        assert_eq!(parse_max_cpus("n/a\n"), None);
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
