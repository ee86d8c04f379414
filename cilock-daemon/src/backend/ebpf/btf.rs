//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): just
//! enough to find struct member offsets, including members nested in
//! anonymous structs and unions. aya's own BTF type does not expose members,
//! and the available crate is LGPL; the format is small and stable.

use std::collections::HashMap;

/// A BTF parsing or lookup error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BtfError {
    /// The blob is not BTF or is truncated.
    #[error("invalid BTF: {0}")]
    Invalid(&'static str),
    /// A struct is not in the BTF.
    #[error("struct {0} not found in kernel BTF")]
    NoStruct(String),
    /// A member is not in the struct.
    #[error("member {1} not found in struct {0}")]
    NoMember(String, String),
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Debug)]
struct Member {
    name: u32,
    type_id: u32,
    /// Bit offset.
    offset: u32,
}

#[derive(Clone, Debug)]
struct Type {
    name: u32,
    kind: u32,
    /// `size` for structs, referenced type id for modifiers.
    size_or_type: u32,
    members: Vec<Member>,
}

/// Parsed BTF types and strings.
pub struct Btf {
    types: Vec<Type>, // index = type id; 0 is void
    strings: Vec<u8>,
    structs_by_name: HashMap<String, Vec<u32>>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    let s = b.get(off..off + 4).ok_or(BtfError::Invalid("truncated"))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_sys() -> Result<Btf, std::io::Error> {
        let bytes = std::fs::read("/sys/kernel/btf/vmlinux")?;
        Btf::parse(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Parses a little-endian BTF blob.
    pub fn parse(b: &[u8]) -> Result<Btf, BtfError> {
        if b.len() < 24 || b[0] != 0x9f || b[1] != 0xeb {
            return Err(BtfError::Invalid("bad magic (or big-endian BTF)"));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let ts = hdr_len
            .checked_add(type_off)
            .ok_or(BtfError::Invalid("type offset"))?;
        let types_b = b
            .get(ts..ts.saturating_add(type_len))
            .ok_or(BtfError::Invalid("type section out of range"))?;
        let ss = hdr_len
            .checked_add(str_off)
            .ok_or(BtfError::Invalid("string offset"))?;
        let strings = b
            .get(ss..ss.saturating_add(str_len))
            .ok_or(BtfError::Invalid("string section out of range"))?
            .to_vec();

        let mut types = vec![Type {
            name: 0,
            kind: 0,
            size_or_type: 0,
            members: Vec::new(),
        }];
        let mut p = 0usize;
        while p + 12 <= types_b.len() {
            let name = u32_at(types_b, p)?;
            let info = u32_at(types_b, p + 4)?;
            let size_or_type = u32_at(types_b, p + 8)?;
            p += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kflag = info >> 31;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = p + i * 12;
                        let raw_off = u32_at(types_b, m + 8)?;
                        members.push(Member {
                            name: u32_at(types_b, m)?,
                            type_id: u32_at(types_b, m + 4)?,
                            offset: if kflag == 1 {
                                raw_off & 0xff_ffff
                            } else {
                                raw_off
                            },
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                _ => 0,
            };
            p += extra;
            types.push(Type {
                name,
                kind,
                size_or_type,
                members,
            });
        }
        let mut btf = Btf {
            types,
            strings,
            structs_by_name: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate() {
            if (t.kind == KIND_STRUCT || t.kind == KIND_UNION) && !t.members.is_empty() {
                let n = btf.str_at(t.name).to_string();
                if !n.is_empty() {
                    btf.structs_by_name.entry(n).or_default().push(id as u32);
                }
            }
        }
        Ok(btf)
    }

    fn str_at(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Strips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(t),
            }
        }
        None
    }

    fn find_in(&self, t: &Type, member: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for m in &t.members {
            let name = self.str_at(m.name);
            if name == member {
                return Some(m.offset);
            }
            if name.is_empty() {
                if let Some(inner) = self.resolve(m.type_id) {
                    if inner.kind == KIND_STRUCT || inner.kind == KIND_UNION {
                        if let Some(o) = self.find_in(inner, member, depth + 1) {
                            return Some(m.offset + o);
                        }
                    }
                }
            }
        }
        None
    }

    /// Byte offset of `member` (a dotted path like `d_name.len` is allowed)
    /// in `struct name`.
    pub fn offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let ids = self
            .structs_by_name
            .get(name)
            .ok_or_else(|| BtfError::NoStruct(name.to_string()))?;
        'candidates: for &id in ids {
            let mut t = &self.types[id as usize];
            let mut total_bits = 0u32;
            let parts: Vec<&str> = member.split('.').collect();
            for (i, part) in parts.iter().enumerate() {
                let Some(bits) = self.find_in(t, part, 0) else {
                    continue 'candidates;
                };
                total_bits += bits;
                if i + 1 < parts.len() {
                    // Descend into the member's type.
                    let Some(mt) = self.member_type(t, part) else {
                        continue 'candidates;
                    };
                    t = mt;
                }
            }
            return Ok(total_bits / 8);
        }
        Err(BtfError::NoMember(name.to_string(), member.to_string()))
    }

    /// Like [`Btf::offset`], but `None` when absent.
    pub fn try_offset(&self, name: &str, member: &str) -> Option<u32> {
        self.offset(name, member).ok()
    }

    fn member_type<'a>(&'a self, t: &'a Type, member: &str) -> Option<&'a Type> {
        for m in &t.members {
            let name = self.str_at(m.name);
            if name == member {
                return self.resolve(m.type_id);
            }
            if name.is_empty() {
                let inner = self.resolve(m.type_id)?;
                if inner.kind == KIND_STRUCT || inner.kind == KIND_UNION {
                    if let Some(x) = self.member_type(inner, member) {
                        return Some(x);
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, definitely not").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
    }

    #[test]
    fn kernel_offsets_agree_with_known_layouts() {
        let Ok(btf) = Btf::from_sys() else {
            panic!("this test needs /sys/kernel/btf/vmlinux");
        };
        // Stable for decades: struct path { vfsmount *mnt; dentry *dentry; }.
        assert_eq!(btf.offset("path", "mnt").unwrap(), 0);
        assert_eq!(btf.offset("path", "dentry").unwrap(), 8);
        // qstr.len sits inside an anonymous union/struct: found through it.
        assert_eq!(btf.offset("qstr", "len").unwrap(), 4);
        // Dotted paths descend into member types.
        let d_name = btf.offset("dentry", "d_name").unwrap();
        assert_eq!(btf.offset("dentry", "d_name.len").unwrap(), d_name + 4);
        assert!(btf.offset("task_struct", "no_such_member").is_err());
        assert!(btf.offset("no_such_struct", "x").is_err());
    }
}
