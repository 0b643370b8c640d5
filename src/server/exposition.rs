//! The two text formats `/metrics` speaks, and the choice between them by the `Accept` header:
//! the Prometheus text exposition format 0.0.4, which every scraper and tool reads (the default),
//! and OpenMetrics 1.0, for scrapers that ask for it (Prometheus does, first).
//!
//! Both are written from the same values ([`Family`]). They differ where a counter is named: in
//! 0.0.4 the family is named as its series, `x_total`; in OpenMetrics the family is `x` and its
//! series `x_total`. OpenMetrics also ends with `# EOF`.

use std::fmt::Write;

/// Label names and values, in the order they are written.
pub(crate) type Labels = Vec<(&'static str, String)>;

/// A metric family: its name without any suffix (a counter's `_total` included), its help and
/// its series.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub series: Series,
}

/// A family's type together with its series, so the two cannot disagree.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Series {
    Counter(Vec<(Labels, u64)>),
    Gauge(Vec<(Labels, f64)>),
    Histogram(Vec<(Labels, HistogramValue)>),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HistogramValue {
    /// (upper bound, cumulative count), ascending, the last bound `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Prometheus text exposition format 0.0.4.
    Text,
    OpenMetrics,
}

impl Format {
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format an `Accept` header prefers: the offer with the highest quality, where an offer
    /// takes the quality of the most specific media range matching it; the text format on a
    /// tie, without a header, or when the header accepts neither (answering something a
    /// scraper can read beats a 406 no one handles).
    pub(crate) fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let ranges: Vec<MediaRange> = accept.split(',').filter_map(MediaRange::parse).collect();
        let quality = |kind: &str, subtype: &str| {
            ranges
                .iter()
                .filter(|r| r.matches(kind, subtype))
                .max_by_key(|r| r.specificity())
                .map_or(0, |r| r.quality)
        };
        let text = quality("text", "plain");
        let openmetrics = quality("application", "openmetrics-text");
        if openmetrics > text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// One entry of an `Accept` header; quality in thousandths, as the header writes it.
struct MediaRange<'a> {
    kind: &'a str,
    subtype: &'a str,
    quality: u16,
}

impl<'a> MediaRange<'a> {
    fn parse(entry: &'a str) -> Option<MediaRange<'a>> {
        let mut parts = entry.split(';');
        let (kind, subtype) = parts.next()?.trim().split_once('/')?;
        let mut quality = 1000;
        for param in parts {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            if key.trim().eq_ignore_ascii_case("q") {
                quality = parse_quality(value.trim())?;
            }
        }
        Some(MediaRange {
            kind: kind.trim(),
            subtype: subtype.trim(),
            quality,
        })
    }

    fn matches(&self, kind: &str, subtype: &str) -> bool {
        (self.kind == "*" || self.kind.eq_ignore_ascii_case(kind))
            && (self.subtype == "*" || self.subtype.eq_ignore_ascii_case(subtype))
    }

    fn specificity(&self) -> u8 {
        u8::from(self.kind != "*") + u8::from(self.subtype != "*")
    }
}

/// `q` as RFC 9110 writes it (`0`, `0.5`, `1.000`), in thousandths; `None` when malformed, which
/// drops the whole entry.
fn parse_quality(value: &str) -> Option<u16> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{fraction:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Writes `families` in `format`.
pub(crate) fn encode(families: &[Family], format: Format) -> String {
    let mut out = String::with_capacity(16 * 1024);
    for family in families {
        // Writing into a `String` cannot fail.
        let _ = write_family(&mut out, family, format);
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

fn write_family(out: &mut String, family: &Family, format: Format) -> std::fmt::Result {
    let (kind, counter_suffix) = match family.series {
        Series::Counter(_) => ("counter", "_total"),
        Series::Gauge(_) => ("gauge", ""),
        Series::Histogram(_) => ("histogram", ""),
    };
    let described = match format {
        Format::Text => counter_suffix,
        Format::OpenMetrics => "",
    };
    write!(out, "# HELP {}{described} ", family.name)?;
    write_escaped(out, family.help, format == Format::OpenMetrics);
    writeln!(out)?;
    writeln!(out, "# TYPE {}{described} {kind}", family.name)?;
    match &family.series {
        Series::Counter(series) => {
            for (labels, value) in series {
                write_sample(out, family.name, "_total", labels, None)?;
                writeln!(out, " {value}")?;
            }
        }
        Series::Gauge(series) => {
            for (labels, value) in series {
                write_sample(out, family.name, "", labels, None)?;
                writeln!(out, " {}", float(*value))?;
            }
        }
        Series::Histogram(series) => {
            for (labels, value) in series {
                for &(bound, count) in &value.buckets {
                    let le = float(bound);
                    write_sample(out, family.name, "_bucket", labels, Some(&le))?;
                    writeln!(out, " {count}")?;
                }
                write_sample(out, family.name, "_sum", labels, None)?;
                writeln!(out, " {}", float(value.sum))?;
                write_sample(out, family.name, "_count", labels, None)?;
                writeln!(out, " {}", value.count)?;
            }
        }
    }
    Ok(())
}

fn write_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &Labels,
    le: Option<&str>,
) -> std::fmt::Result {
    write!(out, "{name}{suffix}")?;
    let all = labels
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(le.map(|le| ("le", le)));
    let mut first = true;
    for (key, value) in all {
        out.push(if first { '{' } else { ',' });
        first = false;
        write!(out, "{key}=\"")?;
        write_escaped(out, value, true);
        out.push('"');
    }
    if !first {
        out.push('}');
    }
    Ok(())
}

/// Backslash and newline escaped, and the double quote where the format asks for it (label
/// values in both; help text only in OpenMetrics).
fn write_escaped(out: &mut String, text: &str, quote: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// A float as both formats read it: `+Inf`, `-Inf`, `NaN`, else the shortest decimal that reads
/// back as the same number (`5e-5`, `0.0001`, `1.0`).
fn float(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&'static str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    fn sample_families() -> Vec<Family> {
        vec![
            Family {
                name: "x_requests",
                help: "Requests.",
                series: Series::Counter(vec![
                    (labels(&[("model", "m"), ("status", "200")]), 3),
                    (labels(&[("model", "q\"b\\s\nl"), ("status", "500")]), 1),
                ]),
            },
            Family {
                name: "x_depth",
                help: "Depth \\ of the \"queue\"\nnow.",
                series: Series::Gauge(vec![(labels(&[]), 2.0)]),
            },
            Family {
                name: "x_seconds",
                help: "Seconds.",
                series: Series::Histogram(vec![(
                    labels(&[("model", "m")]),
                    HistogramValue {
                        buckets: vec![(0.00005, 1), (0.5, 2), (f64::INFINITY, 3)],
                        sum: 1.25,
                        count: 3,
                    },
                )]),
            },
            Family {
                name: "x_empty_seconds",
                help: "Nothing yet.",
                series: Series::Histogram(Vec::new()),
            },
        ]
    }

    #[test]
    fn text_format_names_counter_families_with_their_total_suffix() {
        let text = encode(&sample_families(), Format::Text);
        let expected = r#"# HELP x_requests_total Requests.
# TYPE x_requests_total counter
x_requests_total{model="m",status="200"} 3
x_requests_total{model="q\"b\\s\nl",status="500"} 1
# HELP x_depth Depth \\ of the "queue"\nnow.
# TYPE x_depth gauge
x_depth 2.0
# HELP x_seconds Seconds.
# TYPE x_seconds histogram
x_seconds_bucket{model="m",le="5e-5"} 1
x_seconds_bucket{model="m",le="0.5"} 2
x_seconds_bucket{model="m",le="+Inf"} 3
x_seconds_sum{model="m"} 1.25
x_seconds_count{model="m"} 3
# HELP x_empty_seconds Nothing yet.
# TYPE x_empty_seconds histogram
"#;
        assert_eq!(text, expected);
    }

    #[test]
    fn openmetrics_names_counter_families_without_the_suffix_and_ends_with_eof() {
        let text = encode(&sample_families(), Format::OpenMetrics);
        let expected = r#"# HELP x_requests Requests.
# TYPE x_requests counter
x_requests_total{model="m",status="200"} 3
x_requests_total{model="q\"b\\s\nl",status="500"} 1
# HELP x_depth Depth \\ of the \"queue\"\nnow.
# TYPE x_depth gauge
x_depth 2.0
# HELP x_seconds Seconds.
# TYPE x_seconds histogram
x_seconds_bucket{model="m",le="5e-5"} 1
x_seconds_bucket{model="m",le="0.5"} 2
x_seconds_bucket{model="m",le="+Inf"} 3
x_seconds_sum{model="m"} 1.25
x_seconds_count{model="m"} 3
# HELP x_empty_seconds Nothing yet.
# TYPE x_empty_seconds histogram
# EOF
"#;
        assert_eq!(text, expected);
    }

    #[test]
    fn floats_are_written_as_both_formats_read_them() {
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(0.0), "0.0");
        assert_eq!(float(4096.0), "4096.0");
        assert_eq!(float(0.0001), "0.0001");
        assert_eq!(float(1e21), "1e21");
        for v in [0.00005, 26.2144, 1.0 / 3.0, 123456.789] {
            assert_eq!(float(v).parse::<f64>().unwrap(), v);
        }
    }

    #[test]
    fn the_text_format_is_the_default() {
        for accept in [
            None,
            Some(""),
            Some("*/*"),
            Some("text/plain"),
            Some("text/plain;version=0.0.4"),
            Some("application/json"),
            Some("garbage"),
            // A tie goes to the default.
            Some("application/openmetrics-text, text/plain"),
            // The most specific range counts: openmetrics itself is not acceptable here.
            Some("application/openmetrics-text;q=0, */*"),
            Some("application/openmetrics-text;version=1.0.0;q=0.2,text/plain;q=0.9"),
        ] {
            assert_eq!(Format::negotiate(accept), Format::Text, "{accept:?}");
        }
    }

    #[test]
    fn openmetrics_when_the_accept_header_prefers_it() {
        for accept in [
            "application/openmetrics-text",
            "application/openmetrics-text; version=1.0.0",
            "Application/OpenMetrics-Text;version=1.0.0",
            // Prometheus 2.x scrapes with this header.
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            // Prometheus 3.x.
            "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
            // With native histograms on, protobuf first: not offered, so the next best.
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.2",
            "text/plain;q=0.5, application/*",
            "text/plain;q=0, */*;q=0.1",
        ] {
            assert_eq!(
                Format::negotiate(Some(accept)),
                Format::OpenMetrics,
                "{accept}"
            );
        }
    }

    #[test]
    fn qualities_follow_the_rfc_grammar() {
        assert_eq!(parse_quality("1"), Some(1000));
        assert_eq!(parse_quality("1.000"), Some(1000));
        assert_eq!(parse_quality("0.75"), Some(750));
        assert_eq!(parse_quality("0.001"), Some(1));
        assert_eq!(parse_quality("0"), Some(0));
        for bad in ["1.5", "2", "0.0001", "-0.5", "x", "0.a", ""] {
            assert_eq!(parse_quality(bad), None, "{bad}");
        }
        // A malformed entry is ignored, not read as q=1.
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;q=high, text/plain;q=0.1"
            )),
            Format::Text
        );
    }
}
