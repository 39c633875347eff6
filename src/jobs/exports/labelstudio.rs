//! Label Studio: a JSON list of tasks (`tasks.json`) and the labelling config (`config.xml`).
//!
//! Per <https://labelstud.io/guide/predictions> and <https://labelstud.io/guide/tasks>: each
//! task is `{"data": {"image": URL}, "predictions": [{"model_version", "score", "result":
//! [{"id", "from_name", "to_name", "type": "choices", "value": {"choices": [label]}}]}]}`;
//! `from_name`/`to_name` name the `<Choices>` and `<Image>` tags of the config
//! (<https://labelstud.io/tags/choices>). Reviewed decisions go in `annotations` (same
//! `result` layout) instead. Abstained rows are tasks without predictions.

use std::path::Path;

use serde_json::{json, Value};

use super::{xml_escape, ExportOptions, ExportSummary, Origin};
use crate::error::{Error, Result};
use crate::jobs::rows::LabelRecord;
use crate::util::atomic::write_atomic;

/// `name` of the `<Choices>` control, the results' `from_name`.
pub const FROM_NAME: &str = "label";
/// `name` of the `<Image>` object, the results' `to_name`; also the `data` key (`$image`).
pub const TO_NAME: &str = "image";

/// The labelling config matching the tasks.
pub fn config(classes: &[String]) -> String {
    let mut x = String::from("<View>\n");
    x.push_str(&format!(
        "  <Image name=\"{TO_NAME}\" value=\"${TO_NAME}\"/>\n"
    ));
    x.push_str(&format!(
        "  <Choices name=\"{FROM_NAME}\" toName=\"{TO_NAME}\" choice=\"single\" showInLine=\"true\">\n"
    ));
    for c in classes {
        x.push_str(&format!("    <Choice value=\"{}\"/>\n", xml_escape(c)));
    }
    x.push_str("  </Choices>\n</View>\n");
    x
}

fn task(i: usize, r: &LabelRecord, opts: &ExportOptions) -> Value {
    let url = match &opts.image_url_prefix {
        Some(p) => format!("{p}{}", r.path),
        None => r.path.clone(),
    };
    let mut t = json!({"data": {TO_NAME: url}});
    if let Some(label) = r.class() {
        let result = json!([{
            "id": format!("r{i}"),
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "type": "choices",
            "value": {"choices": [label]},
        }]);
        match opts.origin {
            Origin::Model => {
                let mut p = json!({"model_version": opts.model_version, "result": result});
                if let Some(s) = r.score {
                    p["score"] = json!(s);
                }
                t["predictions"] = json!([p]);
            }
            Origin::Review => t["annotations"] = json!([{"result": result}]),
        }
    }
    t
}

/// Writes `OUT/tasks.json` and `OUT/config.xml`.
pub fn write(
    rows: &[LabelRecord],
    classes: &[String],
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportSummary> {
    let tasks: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| task(i, r, opts))
        .collect();
    let tasks_path = out.join("tasks.json");
    let json = serde_json::to_vec_pretty(&tasks).map_err(|source| Error::Serialize {
        path: tasks_path.clone(),
        source,
    })?;
    write_atomic(&tasks_path, &json).map_err(|e| Error::io(&tasks_path, e))?;
    let config_path = out.join("config.xml");
    write_atomic(&config_path, config(classes).as_bytes())
        .map_err(|e| Error::io(&config_path, e))?;
    Ok(ExportSummary {
        files: vec![tasks_path, config_path],
        exported: rows.len(),
        unlabelled: rows.iter().filter(|r| r.class().is_none()).count(),
        failed: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::{export, test_rows::rows, ExportFormat};
    use super::*;

    #[test]
    fn tasks_and_config_follow_the_documented_layout() {
        let d = tempfile::tempdir().unwrap();
        let opts = ExportOptions {
            model_version: "shapes-clip/zero-shot".into(),
            image_url_prefix: Some("/data/local-files/?d=".into()),
            ..Default::default()
        };
        let s = export(&rows(), ExportFormat::LabelStudio, d.path(), &opts).unwrap();
        assert_eq!((s.exported, s.unlabelled), (3, 1));
        let v: Value =
            serde_json::from_slice(&std::fs::read(d.path().join("tasks.json")).unwrap()).unwrap();
        let tasks = v.as_array().expect("a JSON list of tasks");
        assert_eq!(tasks.len(), 3);
        let t = &tasks[0];
        assert!(t["data"]["image"]
            .as_str()
            .unwrap()
            .starts_with("/data/local-files/?d=/"));
        let p = &t["predictions"].as_array().unwrap()[0];
        assert_eq!(p["model_version"], "shapes-clip/zero-shot");
        assert!(p["score"].is_f64());
        let r = &p["result"].as_array().unwrap()[0];
        assert_eq!(r["type"], "choices");
        assert_eq!(r["from_name"], FROM_NAME);
        assert_eq!(r["to_name"], TO_NAME);
        assert_eq!(r["value"]["choices"], json!(["yellow triangle"]));
        assert!(r["id"].is_string());
        // Abstained: a task without predictions.
        assert!(tasks[2].get("predictions").is_none());
        // The config names the same tags, and lists every class once.
        let xml = std::fs::read_to_string(d.path().join("config.xml")).unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "View");
        let img = root.children().find(|n| n.has_tag_name("Image")).unwrap();
        assert_eq!(img.attribute("name"), Some(TO_NAME));
        assert_eq!(img.attribute("value"), Some("$image"));
        let ch = root.children().find(|n| n.has_tag_name("Choices")).unwrap();
        assert_eq!(ch.attribute("name"), Some(FROM_NAME));
        assert_eq!(ch.attribute("toName"), Some(TO_NAME));
        let values: Vec<&str> = ch
            .children()
            .filter(|n| n.has_tag_name("Choice"))
            .filter_map(|n| n.attribute("value"))
            .collect();
        assert_eq!(values, ["black circle", "yellow triangle"]);
    }

    #[test]
    fn reviewed_decisions_are_annotations() {
        let d = tempfile::tempdir().unwrap();
        let opts = ExportOptions {
            origin: Origin::Review,
            ..Default::default()
        };
        export(&rows(), ExportFormat::LabelStudio, d.path(), &opts).unwrap();
        let v: Value =
            serde_json::from_slice(&std::fs::read(d.path().join("tasks.json")).unwrap()).unwrap();
        assert!(v[0].get("predictions").is_none());
        assert_eq!(
            v[0]["annotations"][0]["result"][0]["value"]["choices"][0],
            "yellow triangle"
        );
    }
}
