//! File names derived from identifiers. Identifiers come from clients, so every name built from
//! one goes through [`file_name`] (which escapes what could alias another path) and every path
//! through [`child`] (which refuses anything but one plain component under its directory).

use std::path::{Path, PathBuf};

/// The file-name form of an identifier or version: the text itself, except that a leading dot
/// becomes `%2E`, so no identifier can name `.`, `..` or a hidden file. New identifiers never
/// start with a dot; ids stored by older builds may. `%` is not an identifier character, so
/// escaped names never alias unescaped ones.
pub fn file_name(id: &str) -> String {
    match id.strip_prefix('.') {
        Some(rest) => format!("%2E{rest}"),
        None => id.to_string(),
    }
}

/// The identifier a [`file_name`] came from.
pub fn id_of_file_name(name: &str) -> String {
    match name.strip_prefix("%2E") {
        Some(rest) => format!(".{rest}"),
        None => name.to_string(),
    }
}

/// `dir/name`, checked to stay inside `dir`: `name` must be one normal path component (not
/// empty, `.` or `..`, no separator or NUL).
pub fn child(dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255;
    if !plain {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "refusing file name {} under {}: it would not stay inside the directory",
                crate::text::shown(name),
                dir.display()
            ),
        ));
    }
    Ok(dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_escape_or_alias() {
        for id in [".", "..", ".hidden", "plain", "a.b"] {
            let name = file_name(id);
            assert!(!name.starts_with('.'), "{id} -> {name}");
            assert_eq!(id_of_file_name(&name), id);
            assert!(child(Path::new("/data"), &name).is_ok(), "{name}");
        }
        assert_eq!(file_name(".."), "%2E.");
        for bad in ["", ".", "..", "a/b", "../x", "a\0b"] {
            assert!(child(Path::new("/data"), bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            child(Path::new("/data"), "x").expect("plain"),
            Path::new("/data/x")
        );
    }
}
