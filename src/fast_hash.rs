//! Hash maps for keys the kernel or the daemon chooses (cgroup ids, socket
//! cookies, process keys, container ids and labels): foldhash, a few ns a
//! lookup instead of SipHash's tens, on the per-record path. Keys code in
//! a container can choose in bulk (names and addresses from DNS answers,
//! destinations) keep std's keyed SipHash. docs/ARCHITECTURE.md "Hash maps".

pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
