pub const SERVICE: &str = "accounts";
