//! nftables over nfnetlink, without the `nft` binary or libnftnl: a table of kernlet's
//! own, its base chains, and rules made of the handful of expressions kernlet needs
//! (meta, payload, bitwise, cmp, immediate verdicts, masq). A sync is one batch, so the
//! kernel applies it whole or not at all, and rules are replaced atomically.

use std::io;
use std::net::Ipv4Addr;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_DELTABLE: u16 = 2;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_APPEND: u16 = 0x800;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 0x8000;

const NFPROTO_IPV4: u8 = 2;

/// Netfilter hooks of the inet families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Prerouting = 0,
    Postrouting = 4,
}

/// A base chain of kernlet's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: &'static str,
    /// `filter` or `nat`.
    pub kind: &'static str,
    pub hook: Hook,
    pub priority: i32,
}

/// Which header a payload expression reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    Network = 1,
    Transport = 2,
}

/// One match or action of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// The layer-4 protocol equals `proto`.
    L4Proto(u8),
    /// `len` bytes at `offset` of the header, masked with `mask` when given, equal (or
    /// not) to `value`.
    Payload {
        base: Base,
        offset: u32,
        value: Vec<u8>,
        mask: Option<Vec<u8>>,
        equal: bool,
    },
    Accept,
    Drop,
    Masquerade,
}

impl Expr {
    /// The IPv4 source (`ip saddr`) in (or not in) `net/prefix`.
    pub fn ip_saddr(net: Ipv4Addr, prefix: u8, equal: bool) -> Self {
        Self::ip_field(12, net, prefix, equal)
    }

    /// The IPv4 destination (`ip daddr`) in (or not in) `net/prefix`.
    pub fn ip_daddr(net: Ipv4Addr, prefix: u8, equal: bool) -> Self {
        Self::ip_field(16, net, prefix, equal)
    }

    fn ip_field(offset: u32, net: Ipv4Addr, prefix: u8, equal: bool) -> Self {
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix.min(32)))
        };
        Self::Payload {
            base: Base::Network,
            offset,
            value: net.octets().to_vec(),
            mask: (prefix < 32).then(|| mask.to_be_bytes().to_vec()),
            equal,
        }
    }

    /// The UDP/TCP destination port equals `port`.
    pub fn dport(port: u16) -> Self {
        Self::Payload {
            base: Base::Transport,
            offset: 2,
            value: port.to_be_bytes().to_vec(),
            mask: None,
            equal: true,
        }
    }
}

/// A failed nftables request.
#[derive(Debug, thiserror::Error)]
#[error("nftables: {what}: {source}")]
pub struct NftError {
    pub what: String,
    pub source: io::Error,
}

fn err(what: &str) -> impl FnOnce(io::Error) -> NftError + '_ {
    move |source| NftError {
        what: what.to_string(),
        source,
    }
}

/// Netlink attributes, appended to a buffer.
#[derive(Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn put(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }

    fn str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(kind, &v)
    }

    fn be32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.put(kind, &v.to_be_bytes())
    }

    fn nested(&mut self, kind: u16, inner: &Attrs) -> &mut Self {
        self.put(kind | NLA_F_NESTED, &inner.0)
    }
}

// Attribute numbers of linux/netfilter/nf_tables.h.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;

fn expr(name: &str, data: &Attrs) -> Attrs {
    let mut e = Attrs::default();
    e.str(NFTA_EXPR_NAME, name);
    if !data.0.is_empty() {
        e.nested(NFTA_EXPR_DATA, data);
    }
    e
}

fn value(bytes: &[u8]) -> Attrs {
    let mut v = Attrs::default();
    v.put(NFTA_DATA_VALUE, bytes);
    v
}

fn verdict(code: u32) -> Attrs {
    let mut data = Attrs::default();
    let mut verdict = Attrs::default();
    verdict.be32(NFTA_VERDICT_CODE, code);
    let mut wrapped = Attrs::default();
    wrapped.nested(NFTA_DATA_VERDICT, &verdict);
    data.be32(1, NFT_REG_VERDICT) // NFTA_IMMEDIATE_DREG
        .nested(2, &wrapped); // NFTA_IMMEDIATE_DATA
    expr("immediate", &data)
}

/// The kernel expressions one [`Expr`] is made of.
fn encode(e: &Expr) -> Vec<Attrs> {
    match e {
        Expr::L4Proto(p) => {
            let mut meta = Attrs::default();
            meta.be32(1, NFT_REG_1).be32(2, 16); // NFTA_META_DREG, KEY = NFT_META_L4PROTO
            let mut cmp = Attrs::default();
            cmp.be32(1, NFT_REG_1).be32(2, 0).nested(3, &value(&[*p])); // SREG, OP = EQ, DATA
            vec![expr("meta", &meta), expr("cmp", &cmp)]
        }
        Expr::Payload {
            base,
            offset,
            value: v,
            mask,
            equal,
        } => {
            let mut out = Vec::new();
            let mut load = Attrs::default();
            load.be32(1, NFT_REG_1) // NFTA_PAYLOAD_DREG
                .be32(2, *base as u32)
                .be32(3, *offset)
                .be32(4, v.len() as u32);
            out.push(expr("payload", &load));
            if let Some(m) = mask {
                let mut bw = Attrs::default();
                bw.be32(1, NFT_REG_1) // SREG
                    .be32(2, NFT_REG_1) // DREG
                    .be32(3, m.len() as u32)
                    .nested(4, &value(m)) // MASK
                    .nested(5, &value(&vec![0; m.len()])); // XOR
                out.push(expr("bitwise", &bw));
            }
            let mut cmp = Attrs::default();
            cmp.be32(1, NFT_REG_1)
                .be32(2, if *equal { 0 } else { 1 })
                .nested(3, &value(v));
            out.push(expr("cmp", &cmp));
            out
        }
        Expr::Accept => vec![verdict(1)],
        Expr::Drop => vec![verdict(0)],
        Expr::Masquerade => vec![expr("masq", &Attrs::default())],
    }
}

/// A batch of nftables messages for one table of the IPv4 family.
struct Batch {
    buf: Vec<u8>,
    seq: u32,
    inner: u32,
}

impl Batch {
    fn new() -> Self {
        let mut b = Self {
            buf: Vec::new(),
            seq: 1,
            inner: 0,
        };
        b.message(NFNL_MSG_BATCH_BEGIN, 0, 0, &Attrs::default(), true);
        b
    }

    fn message(&mut self, kind: u16, flags: u16, family: u8, attrs: &Attrs, control: bool) {
        let ty = if control {
            kind
        } else {
            (NFNL_SUBSYS_NFTABLES << 8) | kind
        };
        let len = 16 + 4 + attrs.0.len();
        self.buf.extend_from_slice(&(len as u32).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        let flags = NLM_F_REQUEST | flags | if control { 0 } else { NLM_F_ACK };
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version, resource id (the subsystem, for batch messages).
        self.buf.push(family);
        self.buf.push(0);
        let res = if control { NFNL_SUBSYS_NFTABLES } else { 0 };
        self.buf.extend_from_slice(&res.to_be_bytes());
        self.buf.extend_from_slice(&attrs.0);
        self.seq += 1;
        if !control {
            self.inner += 1;
        }
    }

    fn finish(mut self) -> (Vec<u8>, u32) {
        self.message(NFNL_MSG_BATCH_END, 0, 0, &Attrs::default(), true);
        (self.buf, self.inner)
    }
}

/// Replaces everything in table `table` (family ip) with `chains` and their rules, in
/// one transaction: the table and chains are created when missing, each chain's rules
/// flushed and written again.
pub fn sync_table(table: &str, chains: &[(Chain, Vec<Vec<Expr>>)]) -> Result<(), NftError> {
    let mut b = Batch::new();
    let mut t = Attrs::default();
    t.str(NFTA_TABLE_NAME, table);
    b.message(NFT_MSG_NEWTABLE, NLM_F_CREATE, NFPROTO_IPV4, &t, false);
    for (chain, rules) in chains {
        let mut hook = Attrs::default();
        hook.be32(NFTA_HOOK_HOOKNUM, chain.hook as u32)
            .be32(NFTA_HOOK_PRIORITY, chain.priority as u32);
        let mut c = Attrs::default();
        c.str(NFTA_CHAIN_TABLE, table)
            .str(NFTA_CHAIN_NAME, chain.name)
            .nested(NFTA_CHAIN_HOOK, &hook)
            .str(NFTA_CHAIN_TYPE, chain.kind);
        b.message(NFT_MSG_NEWCHAIN, NLM_F_CREATE, NFPROTO_IPV4, &c, false);
        let mut flush = Attrs::default();
        flush
            .str(NFTA_RULE_TABLE, table)
            .str(NFTA_RULE_CHAIN, chain.name);
        b.message(NFT_MSG_DELRULE, 0, NFPROTO_IPV4, &flush, false);
        for rule in rules {
            let mut list = Attrs::default();
            for e in rule.iter().flat_map(encode) {
                list.nested(NFTA_LIST_ELEM, &e);
            }
            let mut r = Attrs::default();
            r.str(NFTA_RULE_TABLE, table)
                .str(NFTA_RULE_CHAIN, chain.name)
                .nested(NFTA_RULE_EXPRESSIONS, &list);
            b.message(
                NFT_MSG_NEWRULE,
                NLM_F_CREATE | NLM_F_APPEND,
                NFPROTO_IPV4,
                &r,
                false,
            );
        }
    }
    send(b, &format!("writing table ip {table}"))
}

/// Deletes table `table` (family ip) and everything in it; no error when it is absent.
pub fn delete_table(table: &str) -> Result<(), NftError> {
    delete_table_if_present(table).map(|_| ())
}

/// Deletes table `table` (family ip) and everything in it; false when it was absent.
pub fn delete_table_if_present(table: &str) -> Result<bool, NftError> {
    let mut b = Batch::new();
    let mut t = Attrs::default();
    t.str(NFTA_TABLE_NAME, table);
    b.message(NFT_MSG_DELTABLE, 0, NFPROTO_IPV4, &t, false);
    match send(b, &format!("deleting table ip {table}")) {
        Err(e) if e.source.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
        Ok(()) => Ok(true),
    }
}

fn send(batch: Batch, what: &str) -> Result<(), NftError> {
    let (buf, expected) = batch.finish();
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(err(what))?;
    socket.bind_auto().map_err(err(what))?;
    socket.send(&buf, 0).map_err(err(what))?;
    let mut acks = 0;
    while acks < expected {
        let (bytes, _) = socket.recv_from_full().map_err(err(what))?;
        let mut off = 0;
        while off + 16 <= bytes.len() {
            let len =
                u32::from_ne_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]])
                    as usize;
            let ty = u16::from_ne_bytes([bytes[off + 4], bytes[off + 5]]);
            if len < 16 || off + len > bytes.len() {
                break;
            }
            if ty == NLMSG_ERROR && len >= 20 {
                let code = i32::from_ne_bytes([
                    bytes[off + 16],
                    bytes[off + 17],
                    bytes[off + 18],
                    bytes[off + 19],
                ]);
                if code != 0 {
                    return Err(err(what)(io::Error::from_raw_os_error(-code)));
                }
                acks += 1;
            }
            off += (len + 3) & !3;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested() {
        let mut a = Attrs::default();
        a.str(1, "kernlet");
        assert_eq!(a.0.len(), 12, "4 header + 8 name incl. NUL");
        let mut outer = Attrs::default();
        outer.nested(4, &a);
        assert_eq!(
            u16::from_ne_bytes([outer.0[2], outer.0[3]]),
            4 | NLA_F_NESTED
        );
        assert_eq!(outer.0.len(), 16);
    }

    #[test]
    fn prefixes_become_masks() {
        let Expr::Payload { mask, value, .. } =
            Expr::ip_saddr(Ipv4Addr::new(10, 244, 0, 0), 16, true)
        else {
            panic!()
        };
        assert_eq!(mask, Some(vec![255, 255, 0, 0]));
        assert_eq!(value, vec![10, 244, 0, 0]);
        let Expr::Payload { mask, .. } = Expr::ip_saddr(Ipv4Addr::new(198, 18, 0, 10), 32, true)
        else {
            panic!()
        };
        assert_eq!(mask, None, "a /32 compares the address as is");
    }
}
