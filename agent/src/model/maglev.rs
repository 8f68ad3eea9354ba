//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016): a lookup table of `M` entries (a prime) filled
//! in turns from each backend's own permutation of the table. Every node builds the
//! same table from the same backends, so a flow hashed onto it reaches the same backend
//! whichever node an upstream router hands it to; when a backend goes, few flows that
//! were not on it move.

use kernlet_ebpf_common::Backend;

/// Entries of a table: Cilium's smallest size, enough for even spreading over a few
/// dozen backends (the paper asks for M well above 100 × backends for 1% imbalance).
pub const TABLE_SIZE: u32 = 251;

/// A 64-bit mix (splitmix64's finalizer).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A backend's identity for hashing: address and port only (whether it is local
/// differs from node to node; the table must not).
fn identity(b: &Backend) -> u64 {
    let a = &b.addr;
    let words =
        (u64::from(a[0]) << 32 | u64::from(a[1])) ^ mix(u64::from(a[2]) << 32 | u64::from(a[3]));
    mix(words) ^ u64::from(b.port)
}

/// The lookup table for `backends` (in the order given: callers pass them sorted, so
/// every node agrees): `m` entries, each a backend.
pub fn table(backends: &[Backend], m: u32) -> Vec<Backend> {
    if backends.is_empty() || m < 2 {
        return Vec::new();
    }
    let m = u64::from(m);
    let perms: Vec<(u64, u64)> = backends
        .iter()
        .map(|b| {
            let id = identity(b);
            let offset = mix(id ^ 0x6d61_676c_6576_0001) % m;
            let skip = mix(id ^ 0x6d61_676c_6576_0002) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; backends.len()];
    let mut entry: Vec<Option<usize>> = vec![None; m as usize];
    let mut filled = 0u64;
    loop {
        for (i, (offset, skip)) in perms.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m;
            while entry[c as usize].is_some() {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            entry[c as usize] = Some(i);
            next[i] += 1;
            filled += 1;
            if filled == m {
                return entry
                    .into_iter()
                    .map(|e| backends[e.unwrap_or(0)])
                    .collect();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: u8) -> Vec<Backend> {
        (0..n)
            .map(|i| crate::model::services::backend(format!("10.244.{i}.5:8080").parse().unwrap()))
            .collect()
    }

    #[test]
    fn every_backend_gets_a_fair_share_of_the_table() {
        for n in [1u8, 2, 3, 5, 10] {
            let b = backends(n);
            let t = table(&b, TABLE_SIZE);
            assert_eq!(t.len(), TABLE_SIZE as usize);
            let fair = TABLE_SIZE as f64 / f64::from(n);
            for x in &b {
                let share = t.iter().filter(|e| *e == x).count() as f64;
                // Maglev fills in turns: no backend is more than one entry per turn off.
                assert!((share - fair).abs() <= 1.0, "n={n}: {share} vs {fair}");
            }
        }
        assert!(table(&[], TABLE_SIZE).is_empty());
    }

    #[test]
    fn a_backend_leaving_moves_few_other_entries_and_tables_agree() {
        let all = backends(6);
        let before = table(&all, TABLE_SIZE);
        assert_eq!(before, table(&all, TABLE_SIZE), "deterministic");
        // Whether a backend is local to the node does not change the table.
        let mut flagged = all.clone();
        flagged[2].flags = kernlet_ebpf_common::BACKEND_LOCAL;
        let t: Vec<(kernlet_ebpf_common::Addr, u16)> = table(&flagged, TABLE_SIZE)
            .iter()
            .map(|b| (b.addr, b.port))
            .collect();
        let u: Vec<(kernlet_ebpf_common::Addr, u16)> =
            before.iter().map(|b| (b.addr, b.port)).collect();
        assert_eq!(t, u);
        let gone = all[3];
        let rest: Vec<Backend> = all.iter().copied().filter(|b| *b != gone).collect();
        let after = table(&rest, TABLE_SIZE);
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != gone && b != a)
            .count();
        // Entries of the backend that left must move; of the others only a few do.
        assert!(
            (moved as f64) < 0.1 * f64::from(TABLE_SIZE),
            "{moved} entries of remaining backends moved"
        );
        assert!(after.iter().all(|a| *a != gone));
    }
}
