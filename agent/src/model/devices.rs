//! Which devices a container may use: the OCI `linux.resources.devices` rules and the
//! cgroup-v2 device program that enforces them.
//!
//! cgroup v2 has no `devices.allow` file: device access is decided by a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the cgroup (what runc and
//! containerd attach). youki's libcontainer builds one only with a feature kernlet
//! does not link (it pulls libbpf); without a program, a root container with
//! CAP_MKNOD — in containerd's default set — can make a node of the host's disk and
//! read it. So kernlet writes containerd's default rules into every unprivileged
//! container's spec and compiles them here into a program the shim attaches
//! (`sys::device_filter`) before the container's first instruction runs.

use serde::{Deserialize, Serialize};

/// One OCI device cgroup rule (`linux.resources.devices[]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    pub allow: bool,
    /// `a` (all), `c` or `b`; absent means all.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    /// Some of `r`, `w`, `m`; absent means all three.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
}

impl DeviceRule {
    /// Every device, every access: allowed or denied.
    fn all(allow: bool) -> Self {
        Self {
            allow,
            kind: None,
            major: None,
            minor: None,
            access: Some("rwm".into()),
        }
    }

    fn char(major: i64, minor: Option<i64>) -> Self {
        Self {
            allow: true,
            kind: Some("c".into()),
            major: Some(major),
            minor,
            access: Some("rwm".into()),
        }
    }
}

/// The rule that lets a container use the device an OCI `linux.devices[]` entry gives
/// it (a block volume's device): read, write and mknod of that one node.
pub fn rule_for(device: &serde_json::Value) -> Option<DeviceRule> {
    Some(DeviceRule {
        allow: true,
        kind: Some(device["type"].as_str()?.to_string()),
        major: Some(device["major"].as_i64()?),
        minor: Some(device["minor"].as_i64()?),
        access: Some("rwm".into()),
    })
}

/// containerd's rules for an unprivileged container: nothing, then mknod of any
/// character or block device (using one is another matter), then the devices every
/// container has — null, zero, full, random, urandom, tty, console, ptmx, the
/// pseudo-terminals and tun.
pub fn default_rules() -> Vec<DeviceRule> {
    let mknod = |kind: &str| DeviceRule {
        allow: true,
        kind: Some(kind.into()),
        major: None,
        minor: None,
        access: Some("m".into()),
    };
    let mut rules = vec![DeviceRule::all(false), mknod("c"), mknod("b")];
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
    ] {
        rules.push(DeviceRule::char(major, Some(minor)));
    }
    rules.push(DeviceRule::char(136, None));
    rules.push(DeviceRule::char(10, Some(200)));
    rules
}

/// The rules of a privileged container: every device.
pub fn allow_all() -> Vec<DeviceRule> {
    vec![DeviceRule::all(true)]
}

/// Whether the rules allow everything, so no program is needed.
pub fn allows_all(rules: &[DeviceRule]) -> bool {
    rules.last().is_some_and(|r| {
        r.allow
            && matches!(r.kind.as_deref(), None | Some("a"))
            && r.major.is_none_or(|m| m < 0)
            && r.minor.is_none_or(|m| m < 0)
            && access_bits(r.access.as_deref()) == ALL_ACCESS
    })
}

// The program's context (`struct bpf_cgroup_dev_ctx`): `access_type` is the device
// type in the low 16 bits, the access in the high 16; then major, minor.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;
const ALL_ACCESS: i32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

fn access_bits(access: Option<&str>) -> i32 {
    match access {
        None => ALL_ACCESS,
        Some(a) => a.chars().fold(0, |bits, c| {
            bits | match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                _ => 0,
            }
        }),
    }
}

/// One eBPF instruction, as the kernel reads it (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// Destination register in the low four bits, source in the high four.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcodes used (classes, operations and sources of the eBPF instruction set).
pub const LDX_MEM_W: u8 = 0x61;
pub const ALU64_MOV_K: u8 = 0xb7;
pub const ALU64_MOV_X: u8 = 0xbf;
pub const ALU64_AND_K: u8 = 0x57;
pub const ALU64_RSH_K: u8 = 0x77;
pub const JMP_JNE_K: u8 = 0x55;
pub const JMP_EXIT: u8 = 0x95;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

/// The program deciding by `rules`: the last rule that matches a request decides
/// (later rules override earlier ones, as writes to cgroup v1's `devices.allow` and
/// `devices.deny` do); a request no rule matches is refused.
pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut p = vec![
        // r2 = type, r3 = access, r4 = major, r5 = minor
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU64_MOV_X, 3, 2, 0, 0),
        insn(ALU64_AND_K, 2, 0, 0, 0xffff),
        insn(ALU64_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for rule in rules.iter().rev() {
        let mut checks: Vec<(u8, i32)> = Vec::new();
        match rule.kind.as_deref() {
            Some("c") => checks.push((2, DEV_CHAR)),
            Some("b") => checks.push((2, DEV_BLOCK)),
            _ => {}
        }
        if let Some(m) = rule.major.filter(|m| *m >= 0) {
            checks.push((4, i32::try_from(m).unwrap_or(i32::MAX)));
        }
        if let Some(m) = rule.minor.filter(|m| *m >= 0) {
            checks.push((5, i32::try_from(m).unwrap_or(i32::MAX)));
        }
        let access = access_bits(rule.access.as_deref());
        // Each check jumps past the rule's end when it fails: the remaining checks,
        // the access test (3 instructions) and the verdict (2).
        let mut left = checks.len() as i16 + 3 + 2;
        for (reg, value) in checks {
            left -= 1;
            p.push(insn(JMP_JNE_K, reg, 0, left, value));
        }
        // The request's access must be within the rule's: (r3 & !access) == 0.
        p.push(insn(ALU64_MOV_X, 1, 3, 0, 0));
        p.push(insn(ALU64_AND_K, 1, 0, 0, !access));
        p.push(insn(JMP_JNE_K, 1, 0, 2, 0));
        p.push(insn(ALU64_MOV_K, 0, 0, 0, i32::from(rule.allow)));
        p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `prog` (the instructions [`program`] emits) on a request.
    fn run(prog: &[Insn], kind: i32, access: i32, major: u32, minor: u32) -> bool {
        let ctx = [((access << 16) | kind) as u32, major, minor];
        let mut r = [0i64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = (usize::from(i.regs & 0x0f), usize::from(i.regs >> 4));
            pc += 1;
            match i.code {
                LDX_MEM_W => r[dst] = i64::from(ctx[(i.off / 4) as usize]),
                ALU64_MOV_X => r[dst] = r[src],
                ALU64_MOV_K => r[dst] = i64::from(i.imm),
                ALU64_AND_K => r[dst] &= i64::from(i.imm),
                ALU64_RSH_K => r[dst] = ((r[dst] as u64) >> i.imm) as i64,
                JMP_JNE_K => {
                    if r[dst] != i64::from(i.imm) {
                        pc = (pc as i64 + i64::from(i.off)) as usize;
                    }
                }
                JMP_EXIT => return r[0] == 1,
                other => panic!("opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn containerds_defaults_allow_the_usual_devices_and_mknod_only() {
        let p = program(&default_rules());
        let rw = ACC_READ | ACC_WRITE;
        for (major, minor) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 2),
            (136, 4),
        ] {
            assert!(run(&p, DEV_CHAR, rw, major, minor), "c {major}:{minor}");
        }
        // The host's disk, memory, kmsg, a console, fuse: made but not opened.
        for (kind, major, minor) in [
            (DEV_BLOCK, 8, 0),
            (DEV_BLOCK, 253, 0),
            (DEV_BLOCK, 7, 0),
            (DEV_CHAR, 1, 1),
            (DEV_CHAR, 1, 11),
            (DEV_CHAR, 4, 1),
            (DEV_CHAR, 10, 229),
        ] {
            assert!(
                !run(&p, kind, ACC_READ, major, minor),
                "{kind} {major}:{minor}"
            );
            assert!(!run(&p, kind, ACC_WRITE, major, minor));
            assert!(run(&p, kind, ACC_MKNOD, major, minor));
        }
        // Read and mknod of /dev/null at once is within "rwm"; a block 1:3 is not it.
        assert!(run(&p, DEV_CHAR, ACC_READ | ACC_MKNOD, 1, 3));
        assert!(!run(&p, DEV_BLOCK, ACC_READ, 1, 3));
    }

    #[test]
    fn later_rules_override_earlier_ones() {
        let rules: Vec<DeviceRule> = serde_json::from_value(serde_json::json!([
            {"allow": true, "access": "rwm"},
            {"allow": false, "type": "b", "major": 8, "access": "rw"},
            {"allow": true, "type": "b", "major": 8, "minor": 1, "access": "r"},
        ]))
        .unwrap();
        let p = program(&rules);
        assert!(run(&p, DEV_BLOCK, ACC_READ, 8, 1));
        assert!(!run(&p, DEV_BLOCK, ACC_WRITE, 8, 1));
        assert!(!run(&p, DEV_BLOCK, ACC_READ, 8, 0));
        assert!(run(&p, DEV_BLOCK, ACC_MKNOD, 8, 0), "mknod was not denied");
        assert!(run(&p, DEV_CHAR, ACC_READ, 1, 1));
        assert!(
            !run(&program(&[]), DEV_CHAR, ACC_READ, 1, 3),
            "no rule: refused"
        );
    }

    #[test]
    fn privileged_needs_no_program() {
        assert!(allows_all(&allow_all()));
        assert!(!allows_all(&default_rules()));
        assert!(!allows_all(&[]));
    }
}
