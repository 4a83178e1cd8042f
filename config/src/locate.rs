//! Field paths from byte offsets, for the toml crate's errors.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// The field path used when an error cannot be tied to any field (e.g. a broken table header).
pub(crate) const TOP_LEVEL: &str = "(top level)";

/// One key or array item of the document, flattened.
struct Place {
    path: String,
    key_span: Option<Range<usize>>,
    value_span: Range<usize>,
    /// A `[table]` or `[[array]]` header: its span is the header, not the whole table.
    header: bool,
}

/// The field path at byte `offset` of `text`, e.g. `nodes[2].capacity`. Parsing recovers
/// from syntax errors, so this works on broken files too, as well as it can.
pub(crate) fn locate(text: &str, offset: usize) -> String {
    let (root, _errors) = DeTable::parse_recoverable(text);
    let mut places = Vec::new();
    flatten_table(text, root.get_ref(), "", &mut places);

    let contains = |span: &Range<usize>| {
        span.contains(&offset) || (span.start == offset && span.end == offset)
    };
    // 1. The smallest key or value around the offset; the deeper one on a tie (an array of
    //    tables and its first item share the first header).
    let around = places
        .iter()
        .filter_map(|place| {
            let spans = place
                .key_span
                .iter()
                .chain(std::iter::once(&place.value_span));
            spans
                .filter(|span| contains(span))
                .map(|span| span.len())
                .min()
                .map(|len| (len, std::cmp::Reverse(place.path.len()), place))
        })
        .min_by_key(|(len, depth, _)| (*len, *depth));
    if let Some((_, _, place)) = around {
        return place.path.clone();
    }
    // 2. A key earlier on the same line (e.g. a value that does not parse).
    let line_start = text
        .get(..offset)
        .and_then(|before| before.rfind('\n'))
        .map_or(0, |newline| newline + 1);
    let same_line = places
        .iter()
        .filter_map(|place| place.key_span.as_ref().map(|span| (span.start, place)))
        .filter(|(start, _)| (line_start..=offset).contains(start))
        .max_by_key(|(start, _)| *start);
    if let Some((_, place)) = same_line {
        return place.path.clone();
    }
    // 3. The table whose header comes last before the offset.
    let table = places
        .iter()
        .filter(|place| place.header && place.value_span.start <= offset)
        .max_by_key(|place| place.value_span.start);
    match table {
        Some(place) => place.path.clone(),
        None => TOP_LEVEL.to_owned(),
    }
}

fn flatten_table(text: &str, table: &DeTable<'_>, prefix: &str, places: &mut Vec<Place>) {
    for (key, value) in table.iter() {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        let header = matches!(value.get_ref(), DeValue::Table(_))
            && text
                .get(value.span())
                .is_some_and(|source| source.starts_with('['));
        places.push(Place {
            path: path.clone(),
            key_span: Some(key.span()),
            value_span: value.span(),
            header,
        });
        flatten_value(text, value.get_ref(), &path, places);
    }
}

fn flatten_value(text: &str, value: &DeValue<'_>, path: &str, places: &mut Vec<Place>) {
    match value {
        DeValue::Table(table) => flatten_table(text, table, path, places),
        DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{index}]");
                let header = matches!(item.get_ref(), DeValue::Table(_))
                    && text
                        .get(item.span())
                        .is_some_and(|source| source.starts_with("[["));
                places.push(Place {
                    path: item_path.clone(),
                    key_span: None,
                    value_span: item.span(),
                    header,
                });
                flatten_value(text, item.get_ref(), &item_path, places);
            }
        }
        _ => {}
    }
}
