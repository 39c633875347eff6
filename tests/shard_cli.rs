//! End-to-end tests of sharded runs (`--shard`, Slurm and Kubernetes environments) and
//! `cliplabel merge`: the merged output must equal a single-process run, and any gap, duplicate
//! or foreign shard must be an error naming the shard.
//!
//! Every run uses `--batch-size 1`: each image is then computed alone, so a shard computes it
//! exactly as the single process does (with larger batches the matrix multiplies round
//! differently depending on which images share a batch, as for any change of batch size).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use cliplabel::jobs::embed::{read_embeddings, write_embeddings};
use common::*;

const SCHEDULER_VARS: [&str; 6] = [
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_STEP",
    "JOB_COMPLETION_INDEX",
];

/// Runs cliplabel with `args` and exactly the scheduler variables in `env`.
fn cli<S: AsRef<std::ffi::OsStr>>(tmp: &Path, args: &[S], env: &[(&str, &str)]) -> Output {
    let mut c = cliplabel(&tmp.join("cache"));
    for v in SCHEDULER_VARS {
        c.env_remove(v);
    }
    c.envs(env.iter().copied()).args(args);
    run(&mut c)
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A folder of the fixture images, three copies each, plus one file that fails to decode.
fn images(tmp: &Path) -> PathBuf {
    let imgs = tmp.join("imgs");
    image_folder(&imgs, 3);
    std::fs::create_dir_all(imgs.join("sub")).unwrap();
    std::fs::copy(
        fixtures().join("bad/not_an_image.png"),
        imgs.join("sub/broken.png"),
    )
    .unwrap();
    imgs
}

fn label_args(out: &Path, imgs: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "label",
        "--model",
        &tiny_model(),
        "--class",
        "cat",
        "--class",
        "dog",
        "--class",
        "car",
        "--top-k",
        "2",
        "--batch-size",
        "1",
        "--out",
        s(out),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    a.extend(extra.iter().map(|x| x.to_string()));
    a.push(s(imgs).to_string());
    a
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", p.display()))
}

#[test]
fn label_shards_merge_into_the_single_process_output() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let imgs = images(t);
    let single = t.join("single.csv");
    ok(cli(t, &label_args(&single, &imgs, &[]), &[]));
    let single_rows = read_csv(&single);
    assert_eq!(single_rows.len(), 70, "69 images and the header");

    // Shards by flag.
    let out = t.join("flags.csv");
    let mut sizes = Vec::new();
    for i in 0..3 {
        let spec = format!("{i}/3");
        let o = ok(cli(t, &label_args(&out, &imgs, &["--shard", &spec]), &[]));
        let err = stderr(&o);
        assert!(err.contains(&format!("shard {i}/3: ")), "{err}");
        sizes.push(read_csv(&t.join(format!("flags.shard-{i}-of-3.csv"))).len() - 1);
    }
    assert!(sizes.iter().all(|&n| n > 10), "unbalanced split {sizes:?}");
    let o = ok(cli(t, &["merge", s(&out), "--inputs", s(&imgs)], &[]));
    assert!(
        stderr(&o).contains("69 of 70 images, 1 failed"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        read(&out),
        read(&single),
        "merged CSV differs from the single run"
    );
    assert_eq!(read_csv(&out), single_rows);
    assert_eq!(
        read(&with_suffix(&out, ".failed.jsonl")),
        read(&with_suffix(&single, ".failed.jsonl"))
    );
    assert_eq!(
        read(&with_suffix(&out, ".run.json")),
        read(&with_suffix(&single, ".run.json"))
    );

    // Shards from a Slurm array submitted as --array=1-3, the shard read from the environment
    // by default (task 1 also says so explicitly with --shard-from-env).
    let out = t.join("slurm.csv");
    for id in ["1", "2", "3"] {
        let env = [
            ("SLURM_ARRAY_TASK_ID", id),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_ARRAY_TASK_STEP", "1"),
        ];
        let flags: &[&str] = if id == "1" {
            &["--shard-from-env"]
        } else {
            &[]
        };
        let o = ok(cli(t, &label_args(&out, &imgs, flags), &env));
        if id != "1" {
            assert!(
                stderr(&o).contains("taken from the Slurm array"),
                "{}",
                stderr(&o)
            );
        }
    }
    // The same split as by flag.
    for i in 0..3 {
        assert_eq!(
            read(&t.join(format!("slurm.shard-{i}-of-3.csv"))),
            read(&t.join(format!("flags.shard-{i}-of-3.csv")))
        );
    }
    ok(cli(t, &["merge", s(&out)], &[]));
    assert_eq!(read(&out), read(&single));

    // Shards of a Kubernetes Indexed Job, JSONL, with the images reached through another
    // mount point (a symbolic link): the split and the merge do not depend on it.
    let single_jsonl = t.join("single.jsonl");
    ok(cli(t, &label_args(&single_jsonl, &imgs, &[]), &[]));
    let mnt = t.join("mnt");
    std::os::unix::fs::symlink(&imgs, &mnt).unwrap();
    let out = t.join("k8s.jsonl");
    for i in ["0", "1", "2"] {
        let root = if i == "1" { &mnt } else { &imgs };
        ok(cli(
            t,
            &label_args(&out, root, &["--shard-count", "3"]),
            &[("JOB_COMPLETION_INDEX", i)],
        ));
    }
    let manifest = std::fs::read_to_string(t.join("k8s.shard-1-of-3.jsonl.shard.json")).unwrap();
    let flags_manifest =
        std::fs::read_to_string(t.join("flags.shard-1-of-3.csv.shard.json")).unwrap();
    let positions = |m: &str| -> Vec<u64> {
        let v: serde_json::Value = serde_json::from_str(m).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|it| it["i"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(positions(&manifest), positions(&flags_manifest));
    assert!(manifest.contains("/mnt/"), "{manifest}");
    ok(cli(t, &["merge", s(&out)], &[]));
    let merged = std::fs::read_to_string(&out).unwrap();
    let want = std::fs::read_to_string(&single_jsonl).unwrap();
    // Shard 1 wrote its paths under mnt/; otherwise identical, in the same order.
    assert_eq!(
        merged.replace(
            &format!("{}/", mnt.display()),
            &format!("{}/", imgs.display())
        ),
        want
    );
}

#[test]
fn an_interrupted_shard_is_named_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let imgs = images(t);
    let single = t.join("single.csv");
    ok(cli(t, &label_args(&single, &imgs, &[]), &[]));
    let out = t.join("o.csv");
    for i in 0..3 {
        let spec = format!("{i}/3");
        ok(cli(t, &label_args(&out, &imgs, &["--shard", &spec]), &[]));
    }
    let s1 = t.join("o.shard-1-of-3.csv");
    let complete = read(&s1);
    let text = String::from_utf8(complete.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();

    // Preempted after some rows, in the middle of writing one.
    let kept = &lines[..lines.len() - 3];
    let lost: Vec<&str> = lines[lines.len() - 3..]
        .iter()
        .map(|l| l.split(',').next().unwrap())
        .collect();
    std::fs::write(
        &s1,
        format!("{}\n{}", kept.join("\n"), &lines[lines.len() - 3][..8]),
    )
    .unwrap();
    let o = cli(t, &["merge", s(&out)], &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("shard 1 of 3") && err.contains("3 of its"),
        "{err}"
    );
    for p in &lost {
        assert!(err.contains(p), "{p} not named: {err}");
    }
    assert!(!out.exists(), "nothing is written when a check fails");

    // The retried task resumes where it stopped.
    let o = ok(cli(
        t,
        &label_args(&out, &imgs, &["--shard", "1/3", "--resume"]),
        &[],
    ));
    assert!(stderr(&o).contains("labelled 3,"), "{}", stderr(&o));
    ok(cli(t, &["merge", s(&out)], &[]));
    assert_eq!(read(&out), read(&single));

    // A duplicated row is an error naming the shard and the image.
    std::fs::write(&s1, format!("{text}{}\n", lines[2])).unwrap();
    let o = cli(t, &["merge", "--force", s(&out)], &[]);
    let err = stderr(&o);
    assert!(!o.status.success());
    let dup = lines[2].split(',').next().unwrap();
    assert!(
        err.contains("shard 1 of 3") && err.contains("more than once") && err.contains(dup),
        "{err}"
    );
    std::fs::write(&s1, &complete).unwrap();

    // A row of another shard's image in shard 1.
    let s0 = std::fs::read_to_string(t.join("o.shard-0-of-3.csv")).unwrap();
    let foreign = s0.lines().nth(1).unwrap();
    std::fs::write(&s1, format!("{text}{foreign}\n")).unwrap();
    let err = stderr(&cli(t, &["merge", "--force", s(&out)], &[]));
    assert!(
        err.contains("shard 1 of 3") && err.contains(foreign.split(',').next().unwrap()),
        "{err}"
    );
    std::fs::write(&s1, &complete).unwrap();

    // A missing shard.
    std::fs::remove_file(t.join("o.shard-2-of-3.csv")).unwrap();
    let err = stderr(&cli(t, &["merge", "--force", s(&out)], &[]));
    assert!(err.contains("shard 2 of 3 is missing"), "{err}");

    // A shard of another run (other classes).
    let mut args = label_args(&out, &imgs, &["--shard", "2/3"]);
    assert_eq!(args[8], "car");
    args[8] = "bird".into();
    ok(cli(t, &args, &[]));
    let err = stderr(&cli(t, &["merge", "--force", s(&out)], &[]));
    assert!(
        err.contains("shard 2 of 3") && err.contains("classes"),
        "{err}"
    );

    // Images added after the shards ran are caught with --inputs.
    ok(cli(
        t,
        &label_args(&out, &imgs, &["--shard", "2/3", "--force"]),
        &[],
    ));
    ok(cli(
        t,
        &["merge", "--force", s(&out), "--inputs", s(&imgs)],
        &[],
    ));
    std::fs::copy(fixtures().join("images/rgb.png"), imgs.join("late.png")).unwrap();
    let err = stderr(&cli(
        t,
        &["merge", "--force", s(&out), "--inputs", s(&imgs)],
        &[],
    ));
    assert!(
        err.contains("in no shard") && err.contains("late.png"),
        "{err}"
    );
}

#[test]
fn embed_shards_merge_into_the_single_process_output() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let imgs = images(t);
    let model = tiny_model();
    let embed = |out: &Path, extra: &[&str], env: &[(&str, &str)]| {
        let mut a = vec![
            "embed",
            "--model",
            &model,
            "--batch-size",
            "1",
            "--normalize",
            "--out",
            s(out),
        ];
        a.extend_from_slice(extra);
        a.push(s(&imgs));
        cli(t, &a, env)
    };
    let single = t.join("single.safetensors");
    ok(embed(&single, &[], &[]));
    let out = t.join("e.safetensors");
    for i in 0..3 {
        let spec = format!("{i}/3");
        ok(embed(&out, &["--shard", &spec], &[]));
        assert!(t.join(format!("e.shard-{i}-of-3.json")).exists());
    }
    let o = ok(cli(t, &["merge", s(&out), "--inputs", s(&imgs)], &[]));
    assert!(
        stderr(&o).contains("69 of 70 images, 1 failed"),
        "{}",
        stderr(&o)
    );
    let (rows, side) = read_embeddings(&out).unwrap();
    let (want_rows, want_side) = read_embeddings(&single).unwrap();
    assert_eq!(side, want_side);
    assert_eq!(
        rows, want_rows,
        "merged embeddings differ from the single run"
    );
    assert_eq!(side.failed.len(), 1);

    // A duplicated embedding is an error naming the shard.
    let s1 = t.join("e.shard-1-of-3.safetensors");
    let (r1, mut side1) = read_embeddings(&s1).unwrap();
    let mut r1d = r1.clone();
    r1d.extend_from_slice(&r1[..side1.dim]);
    side1.items.push(side1.items[0].clone());
    write_embeddings(&s1, &r1d, &side1).unwrap();
    let err = stderr(&cli(t, &["merge", "--force", s(&out)], &[]));
    assert!(
        err.contains("shard 1 of 3")
            && err.contains("more than once")
            && err.contains(&side1.items[0]),
        "{err}"
    );
    // A lost embedding.
    side1.items.truncate(side1.items.len() - 2);
    write_embeddings(&s1, &r1[..r1.len() - side1.dim], &side1).unwrap();
    let err = stderr(&cli(t, &["merge", "--force", s(&out)], &[]));
    assert!(
        err.contains("shard 1 of 3") && err.contains("neither a result"),
        "{err}"
    );
    // A missing shard.
    std::fs::remove_file(&s1).unwrap();
    let err = stderr(&cli(t, &["merge", "--force", s(&out)], &[]));
    assert!(err.contains("shard 1 of 3 is missing"), "{err}");
    // Shards of an embed run with other settings.
    ok(embed(
        &out,
        &["--shard", "1/3", "--features", "pooled"],
        &[],
    ));
    let err = stderr(&cli(t, &["merge", "--force", s(&out)], &[]));
    assert!(
        err.contains("shard 1 of 3") && err.contains("features"),
        "{err}"
    );
}

#[test]
fn shard_options_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let imgs = t.join("imgs");
    image_folder(&imgs, 1);
    let out = t.join("o.csv");
    let o = cli(t, &label_args(&out, &imgs, &["--shard", "3/3"]), &[]);
    assert!(
        !o.status.success() && stderr(&o).contains("0-based"),
        "{}",
        stderr(&o)
    );
    let o = cli(t, &label_args(&out, &imgs, &["--shard-from-env"]), &[]);
    assert!(
        !o.status.success() && stderr(&o).contains("SLURM_ARRAY_TASK_ID"),
        "{}",
        stderr(&o)
    );
    let o = cli(
        t,
        &label_args(&out, &imgs, &["--shard-from-env"]),
        &[("JOB_COMPLETION_INDEX", "1")],
    );
    assert!(stderr(&o).contains("--shard-count"), "{}", stderr(&o));
    let o = cli(
        t,
        &label_args(&out, &imgs, &["--shard", "1/3", "--shard-count", "3"]),
        &[],
    );
    assert!(!o.status.success());
    // Inside an array job, --no-shard runs everything.
    let o = ok(cli(
        t,
        &label_args(&out, &imgs, &["--no-shard"]),
        &[
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ],
    ));
    assert!(!stderr(&o).contains("shard 0/4"), "{}", stderr(&o));
    assert!(out.exists());
    let o = cli(
        t,
        &[
            "embed",
            "--model",
            &tiny_model(),
            "--text-file",
            s(&out),
            "--shard",
            "0/2",
            "--out",
            s(&t.join("t.safetensors")),
        ],
        &[],
    );
    assert!(stderr(&o).contains("not to --text-file"), "{}", stderr(&o));
    let o = cli(t, &["merge", s(&t.join("none.csv"))], &[]);
    assert!(stderr(&o).contains("no shard outputs"), "{}", stderr(&o));
    let o = cli(t, &["merge", s(&t.join("none.txt"))], &[]);
    assert!(!o.status.success());
}
