//! The multipart grammar as crmgate reads it, case by case: what is a part,
//! what is a key part, what stays byte-exact, and what is refused.

use super::*;

fn strip_str(body: &str) -> Result<Stripped, MultipartError> {
    strip("XyZ", Bytes::from(body.to_string()))
}

fn body(s: &Stripped) -> &str {
    std::str::from_utf8(&s.body).unwrap()
}

const ORDER: &str =
    "--XyZ\r\nContent-Disposition: form-data; name=\"order\"\r\n\r\n{\"externalId\":\"a1\"}\r\n";

#[test]
fn boundaries_are_read_like_the_rfc_and_php_or_refused() {
    for (ct, want) in [
        ("multipart/form-data; boundary=XyZ", "XyZ"),
        ("multipart/form-data; boundary=\"XyZ\"", "XyZ"),
        ("multipart/form-data;boundary=XyZ;charset=utf-8", "XyZ"),
        ("multipart/form-data; charset=utf-8; BOUNDARY=XyZ", "XyZ"),
        (
            "multipart/form-data; boundary=------------------------d74496d66958873e",
            "------------------------d74496d66958873e",
        ),
        ("multipart/form-data; boundary=\"a b;c\"", "a b;c"),
    ] {
        assert_eq!(boundary(ct).as_deref(), Ok(want), "{ct}");
    }
    assert_eq!(
        boundary("multipart/form-data"),
        Err(MultipartError::NoBoundary)
    );
    assert_eq!(
        boundary("multipart/form-data; boundary="),
        Err(MultipartError::NoBoundary)
    );
    for ambiguous in [
        // PHP takes the first "boundary" substring.
        "multipart/form-data; xboundary=a; boundary=b",
        "multipart/form-data; boundary=a; boundary=b",
        // PHP keeps the space; the RFC reading drops it.
        "multipart/form-data; boundary= a",
        "multipart/form-data; boundary=\"unclosed",
    ] {
        assert_eq!(
            boundary(ambiguous),
            Err(MultipartError::AmbiguousBoundary),
            "{ambiguous}"
        );
    }
}

#[test]
fn a_key_part_is_read_and_removed_and_the_rest_kept_byte_exact() {
    let sent = format!(
        "--XyZ\r\nContent-Disposition: form-data; name=\"apiKey\"\r\n\r\nck-1\r\n{ORDER}\
         --XyZ\r\nContent-Disposition: form-data; name=\"site\"\r\n\r\nshop\r\n--XyZ--\r\n"
    );
    let s = strip_str(&sent).unwrap();
    assert_eq!(s.api_key.as_deref(), Some("ck-1"));
    assert!(s.has_site);
    assert_eq!(s.removed, 1);
    assert_eq!(
        body(&s),
        format!(
            "{ORDER}--XyZ\r\nContent-Disposition: form-data; name=\"site\"\r\n\r\nshop\r\n--XyZ--\r\n"
        )
    );
    // A key part last, then the closing boundary.
    let sent = format!(
        "{ORDER}--XyZ\r\ncontent-disposition: form-data; name=apiKey\r\n\r\nck-2\r\n--XyZ--"
    );
    let s = strip_str(&sent).unwrap();
    assert_eq!(
        (s.api_key.as_deref(), body(&s)),
        (Some("ck-2"), format!("{ORDER}--XyZ--").as_str())
    );
    // Nothing to remove: the very same bytes.
    let sent = Bytes::from(format!("{ORDER}--XyZ--\r\n"));
    let s = strip("XyZ", sent.clone()).unwrap();
    assert_eq!(s.body.as_ptr(), sent.as_ptr(), "not copied");
    assert_eq!((s.api_key, s.removed, s.has_site), (None, 0, false));
}

#[test]
fn every_spelling_php_reads_is_removed_but_only_api_key_is_read() {
    for header in [
        "form-data; name=\"apikey\"",
        "form-data; name=\"APIKEY\"",
        "form-data; name=\"api_key\"",
        "form-data; name=\"api.key\"",
        "form-data; name=\"api key\"",
        "form-data; name=\" apiKey\"",
        "form-data; name=\"apiKey[]\"",
        "form-data; name=\"apiKey[0]\"",
        "form-data; NAME=\"api_key\"",
        "form-data;name=apikey",
        // A file part named so goes too (PHP would file it, not read it).
        "form-data; name=\"apiKey\"; filename=\"k.txt\"",
        // Any reading of any name-like parameter counts.
        "form-data; name=\"apiKey\"; name=\"order\"",
        "form-data; name*=UTF-8''api%5Fkey; name=\"x\"",
    ] {
        let sent =
            format!("--XyZ\r\nContent-Disposition: {header}\r\n\r\nck\r\n{ORDER}--XyZ--\r\n");
        let s = strip_str(&sent).unwrap_or_else(|e| panic!("{header}: {e}"));
        assert_eq!(s.removed, 1, "{header}");
        assert_eq!(body(&s), format!("{ORDER}--XyZ--\r\n"), "{header}");
        assert_eq!(s.api_key, None, "{header}: only `apiKey` is a key value");
    }
    // The exact name, however quoted, is the key that finds the tenant.
    for header in [
        "form-data; name=\"apiKey\"",
        "form-data; name='apiKey'",
        "form-data;name=apiKey",
        "form-data; name=\"ap\\\"iKey\"; name=\"apiKey\"",
        // PHP keeps the last name.
        "form-data; name=\"order\"; name=\"apiKey\"",
    ] {
        let sent = format!("--XyZ\r\nContent-Disposition: {header}\r\n\r\nck\r\n--XyZ--\r\n");
        let s = strip_str(&sent).unwrap();
        assert_eq!(
            (s.removed, s.api_key.as_deref()),
            (1, Some("ck")),
            "{header}"
        );
    }
    // A folded header line is one header, as PHP reads it.
    let sent = format!(
        "--XyZ\r\nContent-Disposition: form-data;\r\n name=\"apiKey\"\r\n\r\nck\r\n{ORDER}--XyZ--\r\n"
    );
    let s = strip_str(&sent).unwrap();
    assert_eq!((s.removed, s.api_key.as_deref()), (1, Some("ck")));
    // Not keys.
    for header in [
        "form-data; name=\"apiKeys\"",
        "form-data; name=\"api-key\"",
        "form-data; name=\"key\"",
    ] {
        let sent = format!("--XyZ\r\nContent-Disposition: {header}\r\n\r\nck\r\n--XyZ--\r\n");
        assert_eq!(strip_str(&sent).unwrap().removed, 0, "{header}");
    }
}

#[test]
fn preamble_epilogue_line_ends_and_boundaries_inside_content() {
    let sent = "This is the preamble.\r\n--not-it\r\n\
                --XyZ\nContent-Disposition: form-data; name=\"note\"\n\nline 1\r\n\
                x--XyZ not at a line start\r\n --XyZ indented\r\n\n\
                --XyZ\r\nContent-Disposition: form-data; name=\"apiKey\"\r\n\r\nck\n\
                --XyZ--  \r\nthe epilogue\r\n";
    let s = strip_str(sent).unwrap();
    assert_eq!(s.api_key.as_deref(), Some("ck"), "LF alone ends lines too");
    assert_eq!(
        body(&s),
        "This is the preamble.\r\n--not-it\r\n\
         --XyZ\nContent-Disposition: form-data; name=\"note\"\n\nline 1\r\n\
         x--XyZ not at a line start\r\n --XyZ indented\r\n\n\
         --XyZ--  \r\nthe epilogue\r\n"
    );
    // The value ends before CRLF (or LF) of the boundary line, not earlier.
    let sent = "--XyZ\r\nContent-Disposition: form-data; name=\"apiKey\"\r\n\r\nck\r\n\r\n--XyZ--";
    assert_eq!(strip_str(sent).unwrap().api_key.as_deref(), Some("ck\r\n"));
    // An empty part content, and no parts at all.
    let sent = "--XyZ\r\nContent-Disposition: form-data; name=\"apiKey\"\r\n\r\n\r\n--XyZ--";
    assert_eq!(strip_str(sent).unwrap().api_key.as_deref(), Some(""));
    assert_eq!(strip_str("--XyZ--\r\n").unwrap().removed, 0);
}

#[test]
fn file_parts_stay_byte_exact_and_give_no_key() {
    let file: Vec<u8> = (0u8..=255).chain(*b"\r\n--XyZx\r\n").collect();
    let mut sent =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"apiKey\"; filename=\"k\"\r\n\r\nck\r\n"
            .to_vec();
    let kept_from = sent.len();
    sent.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n");
    // Content may hold "\r\n--XyZx" only if it is no boundary line: refused.
    let mut bad = sent.clone();
    bad.extend_from_slice(&file);
    bad.extend_from_slice(b"\r\n--XyZ--\r\n");
    assert_eq!(
        strip("XyZ", bad.into()),
        Err(MultipartError::BadBoundaryLine)
    );
    sent.extend_from_slice(&file[..256]);
    sent.extend_from_slice(b"\r\n--XyZ--\r\n");
    let s = strip("XyZ", sent.clone().into()).unwrap();
    assert_eq!((s.removed, s.api_key), (1, None));
    assert_eq!(&s.body[..], &sent[kept_from..]);
}

#[test]
fn malformed_bodies_are_refused() {
    use MultipartError::*;
    let name = "Content-Disposition: form-data; name=\"a\"";
    for (sent, want) in [
        ("", NoOpening),
        ("no boundary at all\r\n", NoOpening),
        ("--XyZ\r\n", Unterminated(1)),
        (&format!("--XyZ\r\n{name}\r\n\r\nvalue"), Unterminated(1)),
        (
            &format!("--XyZ\r\n{name}\r\n\r\nv\r\n--XyZ\r\n{name}\r\n\r\nw"),
            Unterminated(2),
        ),
        (
            &format!("--XyZ\r\n{name}\r\nvalue\r\n--XyZ--"),
            UnendedHeaders(1),
        ),
        (
            &format!("--XyZ\r\n{name}\r\n\r\n--XyZ--"),
            UnendedHeaders(1),
        ),
        ("--XyZ\r\n\r\nvalue\r\n--XyZ--", NoName(1)),
        (
            "--XyZ\r\nContent-Type: text/plain\r\n\r\nv\r\n--XyZ--",
            NoName(1),
        ),
        (
            "--XyZ\r\nContent-Disposition: form-data\r\n\r\nv\r\n--XyZ--",
            NoName(1),
        ),
        (
            &format!("--XyZ \r\n{name}\r\n\r\nv\r\n--XyZ--"),
            BadBoundaryLine,
        ),
        (
            &format!("--XyZ\r\n{name}\r\n\r\nv\r\n--XyZZ\r\n--XyZ--"),
            BadBoundaryLine,
        ),
        (
            // PHP would read a part after the closing boundary.
            &format!("--XyZ--\r\n--XyZ\r\n{name}\r\n\r\nv\r\n--XyZ--"),
            AfterClose,
        ),
        (
            "--XyZ\r\nContent-Disposition: form-data; name=\"api\0Key\"\r\n\r\nv\r\n--XyZ--",
            BadLine,
        ),
        (&format!("{}\r\n--XyZ--", "p".repeat(MAX_LINE)), BadLine),
        (
            &format!(
                "--XyZ\r\nX-Long: {}\r\n{name}\r\n\r\nv\r\n--XyZ--",
                "p".repeat(MAX_LINE)
            ),
            BadLine,
        ),
        (&format!("--XyZ--\r\n{}", "e".repeat(MAX_LINE + 1)), BadLine),
    ] {
        assert_eq!(strip_str(sent), Err(want.clone()), "{sent:?}");
    }
    // Long lines inside a part's content are content.
    let long = format!(
        "--XyZ\r\n{name}\r\n\r\n{}\r\n--XyZ--",
        "v".repeat(3 * MAX_LINE)
    );
    assert!(strip_str(&long).is_ok());
}

#[test]
fn a_field_is_added_before_the_closing_boundary() {
    let s = strip_str(&format!("pre\r\n{ORDER}--XyZ--\r\nepi")).unwrap();
    let with = s.with_field("site", "main").unwrap();
    assert_eq!(
        std::str::from_utf8(&with).unwrap(),
        format!(
            "pre\r\n{ORDER}--XyZ\r\nContent-Disposition: form-data; name=\"site\"\r\n\r\nmain\r\n--XyZ--\r\nepi"
        )
    );
    let again = strip("XyZ", with).unwrap();
    assert!(again.has_site);
    assert_eq!(s.with_field("site", "a\r\nb"), None);
    // After a removal the closing boundary moved with the body.
    let s = strip_str(&format!(
        "--XyZ\r\nContent-Disposition: form-data; name=apiKey\r\n\r\nk\r\n{ORDER}--XyZ--"
    ))
    .unwrap();
    let with = s.with_field("site", "s").unwrap();
    assert!(std::str::from_utf8(&with)
        .unwrap()
        .ends_with("name=\"site\"\r\n\r\ns\r\n--XyZ--"));
}
