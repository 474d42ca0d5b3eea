//! placeholder: IP lookups (helper fills)
