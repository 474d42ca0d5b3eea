//! placeholder: the gazetteer (helper fills)
