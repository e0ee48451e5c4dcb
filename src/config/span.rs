//! Byte offsets (what the TOML parser reports) to 1-based line and column (what people read).

/// Start offsets of every line of a text, for turning byte offsets into line:column.
#[derive(Debug, Clone)]
pub struct LineIndex<'a> {
    text: &'a str,
    /// Byte offset where each line starts; `starts[0] == 0`.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> LineIndex<'a> {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    /// 1-based line and column of a byte offset. Columns count characters (not bytes), so a
    /// message points at the same place an editor does; tabs count as one column. Offsets past
    /// the end point just after the last character.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = self.starts[line - 1];
        let column = match self.text.get(start..offset) {
            Some(before) => before.chars().count(),
            // Not on a character boundary: count the bytes instead of failing.
            None => offset - start,
        };
        (line, column + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_character_is_line_1_column_1() {
        let index = LineIndex::new("abc\ndef\n");
        assert_eq!(index.line_col(0), (1, 1));
        assert_eq!(index.line_col(2), (1, 3));
    }

    #[test]
    fn newline_belongs_to_its_line_and_the_next_line_starts_after_it() {
        let index = LineIndex::new("abc\ndef\n");
        assert_eq!(index.line_col(3), (1, 4));
        assert_eq!(index.line_col(4), (2, 1));
        assert_eq!(index.line_col(6), (2, 3));
        assert_eq!(index.line_col(8), (3, 1));
    }

    #[test]
    fn empty_lines_and_crlf() {
        let index = LineIndex::new("a\r\n\r\nb");
        assert_eq!(index.line_col(5), (3, 1));
        assert_eq!(index.line_col(3), (2, 1));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let text = "name = \"zürich\" # ok";
        let index = LineIndex::new(text);
        let hash = text.find('#').expect("a comment");
        assert_eq!(index.line_col(hash), (1, 17));
    }

    #[test]
    fn offsets_past_the_end_point_after_the_last_character() {
        let index = LineIndex::new("ab\ncd");
        assert_eq!(index.line_col(99), (2, 3));
        assert_eq!(LineIndex::new("").line_col(0), (1, 1));
    }
}
