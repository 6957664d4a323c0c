//! Embeds the git commit of the build as `SWITCHBOARD_GIT_COMMIT` (for the
//! `switchboard_build_info` metric): the variable of that name when set (a
//! packager building from a tarball), else `git rev-parse HEAD`, else
//! "unknown"; and reruns when the embedded console's `dist/` changes.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=SWITCHBOARD_GIT_COMMIT");
    let commit = std::env::var("SWITCHBOARD_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    // Built again when HEAD moves: HEAD itself (a branch switch) and the
    // branch's ref (a commit), wherever this worktree keeps them.
    for path in ["HEAD", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(p) = git(&["rev-parse", "--git-path", &branch])
    {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rustc-env=SWITCHBOARD_GIT_COMMIT={commit}");
    // include_dir! does not tell cargo which files it read: rebuild when the
    // console's build output changes (cargo scans a directory recursively).
    println!("cargo:rerun-if-changed=../../console/dist");
}
