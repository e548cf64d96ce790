//! The `dermaedge` binary on the real sample images with the models in models/: results valid
//! against docs/result.schema.json, the ISIC CSV, overlays, and one clear line per bad input.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn dermaedge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dermaedge"))
        .args(args)
        .env("DERMAEDGE_MODELS", common::models())
        // Under QEMU user mode (the aarch64 test run) /proc/cpuinfo has no "Features" line and
        // tract warns about it once per process; these tests count our own stderr lines.
        .env("RUST_LOG", "warn,tract_linalg=error")
        .output()
        .unwrap()
}

fn samples() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(common::samples())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .map(|p| p.display().to_string())
        .collect();
    v.sort();
    v
}

/// `dermaedge analyze --json` with `extra` arguments on `images`: it must succeed; one result
/// per image, parsed.
fn analyze_json(extra: &[&str], images: &[String]) -> Vec<Value> {
    let mut args = vec!["analyze", "--json"];
    args.extend_from_slice(extra);
    args.extend(images.iter().map(String::as_str));
    let out = dermaedge(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), images.len());
    results
}

fn result_schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(common::repo().join("docs/result.schema.json")).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

#[test]
fn analyze_samples_as_json_valid_against_the_schema() {
    let images = samples();
    let lines = analyze_json(&[], &images);
    let schema = result_schema();
    let mut ok = 0;
    for r in &lines {
        let errors: Vec<String> = schema
            .iter_errors(r)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", r["image"]);
        if r["status"] == "ok" {
            ok += 1;
            let c = &r["classification"];
            let sum: f64 = c["probabilities"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_f64().unwrap())
                .sum();
            assert!((sum - 1.0).abs() < 1e-4);
            assert!(r["lesion"]["area_px"].as_u64().unwrap() > 0);
        } else {
            assert!(r["classification"].is_null());
            assert!(!r["recapture_reasons"].as_array().unwrap().is_empty());
        }
        assert_eq!(r["models"].as_array().unwrap().len(), 2);
        // Real dermoscopy: never refused as something else.
        assert!(
            !r["recapture_reasons"]
                .as_array()
                .unwrap()
                .contains(&"not_dermoscopic".into()),
            "{}: refused as not dermoscopic (distance {} over {})",
            r["image"],
            r["quality"]["ood_distance"],
            r["quality"]["ood_threshold"]
        );
    }
    assert!(
        ok >= images.len() / 2,
        "most real samples should pass the quality gate: {ok}"
    );
}

/// Issue 11: a camera's colour bars and ordinary photos get no classification and no
/// melanoma flag, with either model precision.
#[test]
fn colour_bars_and_wallpapers_get_no_classification() {
    let dir = tempfile::tempdir().unwrap();
    let bars = dir.path().join("colour-bars.png");
    common::colour_bars(640, 480).save(&bars).unwrap();
    // Bars that the quality gate lets through: the OOD decision itself must refuse them.
    let past_the_gate = common::samples().join("colour-bars.jpeg");
    let mut images = vec![
        bars.display().to_string(),
        past_the_gate.display().to_string(),
    ];
    for w in common::WALLPAPERS {
        assert!(
            Path::new(w).is_file(),
            "{w}: missing; install the test packages (scripts/apt-deps.sh test)"
        );
        images.push(w.to_string());
    }
    for precision in ["float32", "int8"] {
        let results = analyze_json(&["--precision", precision], &images);
        let schema = result_schema();
        for r in &results {
            assert!(
                schema.is_valid(r),
                "{}: not valid against the schema",
                r["image"]
            );
            assert_eq!(r["status"], "recapture", "{precision} {}: {r}", r["image"]);
            assert!(r["classification"].is_null(), "{precision} {}", r["image"]);
        }
        assert_eq!(
            results[1]["recapture_reasons"],
            serde_json::json!(["not_dermoscopic"]),
            "{precision}: {}",
            results[1]
        );
        let d = results[1]["quality"]["ood_distance"].as_f64().unwrap();
        assert!(d > results[1]["quality"]["ood_threshold"].as_f64().unwrap());
    }
}

/// A classifier manifest without OOD statistics is refused at start, by name.
#[test]
fn a_classifier_without_ood_statistics_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_models(dir.path());
    let path = dir.path().join("classifier-f32.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m.as_object_mut().unwrap().remove("ood");
    std::fs::write(&path, m.to_string()).unwrap();
    let image = common::samples().join("ISIC_0001100.jpg");
    let out = dermaedge(&[
        "analyze",
        "--models",
        dir.path().to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("classifier-f32.json") && err.contains("no `ood` block"),
        "{err}"
    );
}

#[test]
fn analyze_writes_isic_csv_and_overlays() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("pred.csv");
    let masks = dir.path().join("masks");
    let images = samples();
    let mut args = vec![
        "analyze",
        "--csv",
        csv.to_str().unwrap(),
        "--masks",
        masks.to_str().unwrap(),
    ];
    args.extend(images.iter().map(String::as_str));
    let out = dermaedge(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC"));
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        assert!(cells[0].starts_with("ISIC_") && !cells[0].ends_with(".jpg"));
        let sum: f64 = cells[1..].iter().map(|c| c.parse::<f64>().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-4);
    }
    let overlay = image::open(masks.join("ISIC_0001100.overlay.png")).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (384, 384));
    // The mask is the lesion as the device found it: binary, the image's size, and close to
    // the ISIC 2018 ground truth on this sample (a shifted or scaled mask would not be).
    let mask = image::open(masks.join("ISIC_0001100.mask.png"))
        .unwrap()
        .to_luma8();
    let truth = image::open(common::samples().join("masks/ISIC_0001100.png"))
        .unwrap()
        .to_luma8();
    assert_eq!(mask.dimensions(), truth.dimensions());
    assert!(mask.pixels().all(|p| p[0] == 0 || p[0] == 255));
    let (mut both, mut either) = (0u32, 0u32);
    for (m, t) in mask.pixels().zip(truth.pixels()) {
        both += u32::from(m[0] > 127 && t[0] > 127);
        either += u32::from(m[0] > 127 || t[0] > 127);
    }
    let jaccard = f64::from(both) / f64::from(either.max(1));
    assert!(jaccard > 0.6, "Jaccard with the ground truth {jaccard:.3}");
}

#[test]
fn int8_models_load_and_analyze() {
    let image = common::samples().join("ISIC_0001100.jpg");
    let out = dermaedge(&[
        "analyze",
        "--json",
        "--precision",
        "int8",
        image.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["models"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["precision"] == "int8"));
}

#[test]
fn each_bad_input_gets_one_clear_line_and_the_batch_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sample = std::fs::read(common::samples().join("ISIC_0001100.jpg")).unwrap();
    std::fs::write(d.join("notes.jpg"), b"patient notes, not an image").unwrap();
    std::fs::write(d.join("cut.jpg"), &sample[..sample.len() / 3]).unwrap();
    std::fs::write(d.join("empty.jpg"), b"").unwrap();
    image::RgbImage::new(1, 1).save(d.join("one.png")).unwrap();
    std::fs::write(d.join("bomb.png"), common::png_header_only(20_000, 20_000)).unwrap();
    let bad = [
        "notes.jpg",
        "cut.jpg",
        "empty.jpg",
        "one.png",
        "bomb.png",
        "missing.jpg",
    ];
    let good = common::samples().join("ISIC_0000900.jpg");
    let mut args: Vec<String> = vec!["analyze".into(), "--json".into()];
    args.extend(bad.iter().map(|b| d.join(b).display().to_string()));
    args.push(good.display().to_string());
    let out = dermaedge(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), bad.len(), "{stderr}");
    for (line, name) in lines.iter().zip(bad) {
        assert!(
            line.starts_with("dermaedge: ") && line.contains(name),
            "{line}"
        );
    }
    assert!(lines[0].contains("not a supported image"));
    assert!(lines[1].contains("corrupt or truncated"));
    assert!(lines[3].contains("1x1, smaller than the minimum"));
    assert!(lines[4].contains("decompression bomb"));
    assert!(lines[5].contains("cannot read"));
    let results: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["image"], "ISIC_0000900.jpg");
}

fn copy_models(to: &Path) {
    for e in std::fs::read_dir(common::models()).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn corrupt_or_missing_models_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    copy_models(dir.path());
    let f32 = dir.path().join("classifier-f32.onnx");
    let mut bytes = std::fs::read(&f32).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&f32, bytes).unwrap();
    let image = common::samples().join("ISIC_0001100.jpg");
    let out = Command::new(env!("CARGO_BIN_EXE_dermaedge"))
        .args([
            "analyze",
            "--models",
            dir.path().to_str().unwrap(),
            image.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("classifier-f32.onnx: sha256 is") && err.contains("corrupt"),
        "{err}"
    );

    let out = dermaedge(&[
        "analyze",
        "--models",
        "/nonexistent/models",
        image.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/models: cannot read"));

    std::fs::write(
        dir.path().join("segmenter-f32.json"),
        "{\"schema_version\": 2}",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dermaedge"))
        .args(["models", "--models", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("segmenter-f32.json: INVALID"), "{text}");
}

#[test]
fn models_lists_the_installed_manifests() {
    let out = dermaedge(&["models"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for name in [
        "classifier-f32.json",
        "classifier-int8.json",
        "segmenter-f32.json",
        "segmenter-int8.json",
    ] {
        assert!(text.contains(name), "{text}");
    }
    assert!(text.contains("CC BY-NC 4.0"));
}
