//! CVAT for images 1.1: `annotations.xml`, per <https://docs.cvat.ai/docs/other/xml_format/>.
//!
//! `<annotations><version>1.1</version><meta><task>` with `name`, `size`, `mode` (`annotation`)
//! and `<labels><label><name>` for every class, then one `<image id name width height>` per
//! image, ids in the lexical order of the names (as the page specifies), each with one
//! `<tag label source>` (`auto` for model labels, `manual` for review decisions) unless the row
//! abstained. Width and height are read from the image header (no full decode).

use std::path::Path;

use super::{resolve, xml_escape, ExportOptions, ExportSummary, Origin};
use crate::error::{Error, Result};
use crate::jobs::rows::LabelRecord;
use crate::jobs::writers::Failure;
use crate::util::atomic::write_atomic;

fn dimensions(path: &Path) -> std::result::Result<(u32, u32), String> {
    image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .into_dimensions()
        .map_err(|e| format!("cannot read the image header: {e}"))
}

/// Writes `OUT/annotations.xml`.
pub fn write(
    rows: &[LabelRecord],
    classes: &[String],
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportSummary> {
    let mut summary = ExportSummary::default();
    let mut images: Vec<(&LabelRecord, u32, u32)> = Vec::new();
    for r in rows {
        match dimensions(&resolve(&opts.base_dir, &r.path)) {
            Ok((w, h)) => images.push((r, w, h)),
            Err(error) => summary.failed.push(Failure {
                path: r.path.clone(),
                error,
            }),
        }
    }
    images.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    let source = match opts.origin {
        Origin::Model => "auto",
        Origin::Review => "manual",
    };
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<annotations>\n");
    x.push_str("  <version>1.1</version>\n  <meta>\n    <task>\n");
    x.push_str(&format!(
        "      <name>{}</name>\n",
        xml_escape(&opts.task_name)
    ));
    x.push_str(&format!("      <size>{}</size>\n", images.len()));
    x.push_str("      <mode>annotation</mode>\n      <labels>\n");
    for c in classes {
        x.push_str(&format!(
            "        <label>\n          <name>{}</name>\n          <attributes>\n          </attributes>\n        </label>\n",
            xml_escape(c)
        ));
    }
    x.push_str("      </labels>\n    </task>\n  </meta>\n");
    for (id, (r, w, h)) in images.iter().enumerate() {
        x.push_str(&format!(
            "  <image id=\"{id}\" name=\"{}\" width=\"{w}\" height=\"{h}\">\n",
            xml_escape(&r.path)
        ));
        match r.class() {
            Some(label) => x.push_str(&format!(
                "    <tag label=\"{}\" source=\"{source}\">\n    </tag>\n",
                xml_escape(label)
            )),
            None => summary.unlabelled += 1,
        }
        x.push_str("  </image>\n");
    }
    x.push_str("</annotations>\n");
    let path = out.join("annotations.xml");
    write_atomic(&path, x.as_bytes()).map_err(|e| Error::io(&path, e))?;
    summary.exported = images.len();
    summary.files.push(path);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::super::{export, test_rows::rows, ExportFormat};
    use super::*;

    #[test]
    fn xml_follows_cvat_for_images_1_1() {
        let d = tempfile::tempdir().unwrap();
        let mut rs = rows();
        rs.push(LabelRecord {
            path: d.path().join("missing.png").display().to_string(),
            ..rs[0].clone()
        });
        let s = export(&rs, ExportFormat::Cvat, d.path(), &ExportOptions::default()).unwrap();
        assert_eq!((s.exported, s.unlabelled, s.failed.len()), (3, 1, 1));
        assert!(s.failed[0].path.ends_with("missing.png"));
        let xml = std::fs::read_to_string(d.path().join("annotations.xml")).unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "annotations");
        fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> roxmltree::Node<'a, 'i> {
            n.children()
                .find(|c| c.has_tag_name(name))
                .unwrap_or_else(|| panic!("no <{name}>"))
        }
        assert_eq!(child(root, "version").text(), Some("1.1"));
        let task = child(child(root, "meta"), "task");
        assert_eq!(child(task, "size").text(), Some("3"));
        assert_eq!(child(task, "mode").text(), Some("annotation"));
        let labels: Vec<&str> = child(task, "labels")
            .children()
            .filter(|n| n.has_tag_name("label"))
            .map(|l| child(l, "name").text().unwrap())
            .collect();
        assert_eq!(labels, ["black circle", "yellow triangle"]);
        let images: Vec<_> = root
            .children()
            .filter(|n| n.has_tag_name("image"))
            .collect();
        assert_eq!(images.len(), 3);
        for (i, im) in images.iter().enumerate() {
            assert_eq!(im.attribute("id"), Some(i.to_string().as_str()));
            let w: u32 = im.attribute("width").unwrap().parse().unwrap();
            let h: u32 = im.attribute("height").unwrap().parse().unwrap();
            let (tw, th) = image::image_dimensions(im.attribute("name").unwrap()).unwrap();
            assert_eq!((w, h), (tw, th));
        }
        // Lexical order of names; the abstained image has no tag.
        let names: Vec<&str> = images
            .iter()
            .map(|i| i.attribute("name").unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        let tag = child(images[0], "tag");
        assert_eq!(tag.attribute("label"), Some("yellow triangle"));
        assert_eq!(tag.attribute("source"), Some("auto"));
        assert!(images[2].children().all(|c| !c.has_tag_name("tag")));
    }
}
