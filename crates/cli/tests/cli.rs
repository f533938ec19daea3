//! The `karnna` binary as a user meets it: train the tiny config on a short text, sample from
//! it, and get one-line errors with exit code 2 for bad input.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{karnna, tiny_config, train_short, workdir, SHORT};

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A fresh folder `name` holding `short.txt` (SHORT 30 times) and a tiny run of `iters`
/// iterations on it.
fn trained(name: &str, iters: usize) -> PathBuf {
    let dir = workdir(name);
    std::fs::write(dir.join("short.txt"), SHORT.repeat(30)).unwrap();
    let o = train_short(&dir, &["--max-iters", &iters.to_string()]);
    assert!(o.status.success(), "{}", text(&o).1);
    dir
}

/// `karnna LINE` fails with exit code 2 and a single stderr line containing `needle`. `LINE`'s
/// words are split at spaces; the word `TINY` stands for the path of `configs/tiny.toml`.
fn assert_one_line_error(dir: &Path, line: &str, needle: &str) {
    let tiny = tiny_config();
    let args: Vec<&str> = line
        .split(' ')
        .map(|w| if w == "TINY" { tiny.as_str() } else { w })
        .collect();
    let o = karnna(dir, &args);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
}

#[test]
fn train_then_sample_a_short_text() {
    let dir = workdir("flow");
    std::fs::write(dir.join("short.txt"), SHORT.repeat(30)).unwrap();
    let o = train_short(&dir, &["--epochs", "4", "--max-iters", "60"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("parameters:"), "{out}");
    // Checkpoints every 50 iterations (tiny.toml's save_every_n) and at the end; the short
    // epochs (about 20 iterations) are not saved on their own.
    let ckpts = std::fs::read_dir(dir.join("artifacts/tiny"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "ckpt")
        })
        .count();
    assert_eq!(ckpts, 2, "{out}");
    // Piped output has plain progress lines, counting to where the run stops (max_iters).
    assert!(out.contains("iter     30/60 "), "{out}");
    let run = dir.join("artifacts/tiny");
    for f in [
        "config.toml",
        "vocab.json",
        "metrics.csv",
        "loss.svg",
        "best.txt",
    ] {
        assert!(run.join(f).exists(), "{f}");
    }

    // Training again into the same folder refuses without --resume or --fresh.
    let o = train_short(&dir, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--resume"));

    let a = karnna(&dir, &["sample", "--seed", "7", "--len", "120"]);
    let b = karnna(&dir, &["sample", "--seed", "7", "--len", "120"]);
    assert!(a.status.success(), "{}", text(&a).1);
    assert!(a.stdout.starts_with(b"Far"));
    assert_eq!(a.stdout, b.stdout);

    let all = karnna(
        &dir,
        &["sample", "--all-checkpoints", "--len", "20", "--seed", "1"],
    );
    let (out, _) = text(&all);
    assert!(out.matches("==> ").count() >= 2, "{out}");

    for (line, needle) in [
        ("sample --top-n 0", "--top-n must be between 1 and"),
        ("sample --top-n 1000", "--top-n must be between 1 and"),
        ("sample --temperature 0", "--temperature must be positive"),
        ("sample --prime Zq字", "cannot read them"),
        (
            "sample --checkpoint nothing.ckpt",
            "nothing.ckpt: no such checkpoint",
        ),
        (
            "sample --checkpoint short.txt",
            "short.txt: not a karnna checkpoint",
        ),
    ] {
        assert_one_line_error(&dir, line, needle);
    }
}

/// `precision = "bf16"` trains in bf16 where the kernels have `VDPBF16PS`, and says in one line
/// that it computes in f32 where they do not: forced here with `KARNNA_SIMD=avx512`, which takes
/// AVX512_BF16 away on any CPU. The run folder's provenance says which it was. A cap that names
/// no instruction set is one line and exit 2.
#[test]
fn bf16_precision_runs_or_says_it_falls_back() {
    let dir = workdir("bf16");
    std::fs::write(dir.join("short.txt"), SHORT.repeat(30)).unwrap();
    let has_dot = karnna_kernels::bf16_dot();
    for (cap, bf16) in [(None, has_dot), (Some("avx512"), false)] {
        let tiny = tiny_config();
        let args = ["train", "--config", &tiny, "--data", "short.txt", "--fresh"];
        let args = [&args[..], &["--precision", "bf16", "--max-iters", "3"]].concat();
        let mut cmd = common::command(&dir);
        if let Some(cap) = cap {
            cmd.env("KARNNA_SIMD", cap);
        }
        let o = cmd.args(&args).output().unwrap();
        let (out, err) = text(&o);
        assert!(o.status.success(), "{cap:?}: {out}\n{err}");
        let line = out.lines().find(|l| l.starts_with("precision:")).unwrap();
        let provenance =
            std::fs::read_to_string(dir.join("artifacts/tiny/provenance.txt")).unwrap();
        if bf16 {
            assert!(line.contains("bf16 products, f32 sums"), "{cap:?}: {line}");
        } else {
            assert!(
                line.contains("f32: this CPU has no AVX512_BF16"),
                "{cap:?}: {line}"
            );
        }
        let recorded = line.trim_start_matches("precision:").trim();
        assert!(
            provenance.contains(&format!("\nprecision: {recorded}\n")),
            "{provenance}"
        );
    }
    let tiny = tiny_config();
    let info = ["info", "--config", &tiny, "--data", "short.txt"];
    let o = common::command(&dir)
        .env("KARNNA_SIMD", "sse9")
        .args(info)
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("KARNNA_SIMD=\"sse9\" is not an instruction set"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let dir = workdir("errors");
    std::fs::write(dir.join("bad.txt"), b"abc\xffdef").unwrap();
    std::fs::write(dir.join("bad.toml"), "num_layers = 0\n").unwrap();
    for (line, needle) in [
        (
            "info --config TINY --data missing.txt",
            "missing.txt: no such file",
        ),
        (
            "info --config TINY --data bad.txt",
            "bad.txt: not valid UTF-8 at byte 3",
        ),
        (
            "info --config bad.toml",
            "bad.toml: num_layers must be at least 1",
        ),
        ("train --config TINY --data bad.txt", "not valid UTF-8"),
        (
            "train --config TINY --keep-prob 1.5",
            "keep_prob must be in (0, 1]",
        ),
        ("sample", "no training run found"),
    ] {
        assert_one_line_error(&dir, line, needle);
    }
}

#[test]
fn info_on_anna_when_present() {
    let anna = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/anna.txt");
    if !anna.exists() {
        eprintln!(
            "SKIPPED info_on_anna_when_present: {} is absent",
            anna.display()
        );
        return;
    }
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs/anna.toml")
        .display()
        .to_string();
    let dir = workdir("anna");
    let anna = anna.display().to_string();
    let o = karnna(&dir, &["info", "--config", &cfg, "--data", &anna]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("characters:      1985223"), "{out}");
    assert!(out.contains("vocabulary:      83 symbols"), "{out}");
    assert!(out.contains("parameters:      3366483"), "{out}");
    // Every validation batch of the notebook's run counts.
    assert!(
        out.contains("validation:      all 20 batches, each time"),
        "{out}"
    );
    // Prepared once, 1 byte a character, in the cache; the second time found ready.
    assert!(
        out.contains("1.9 MiB, 1 byte a character; prepared in"),
        "{out}"
    );
    let o = karnna(&dir, &["info", "--config", &cfg, "--data", &anna]);
    let (again, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        again.contains("1 byte a character; ready, checked in"),
        "{again}"
    );
}

/// The value of `key=` in `karnna eval`'s output (up to the next space).
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.split([' ', '\n'])
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {out}"))
}

fn number(out: &str, key: &str) -> f64 {
    field(out, key)
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e} in {out}"))
}

#[test]
fn eval_scores_a_text() {
    let dir = trained("eval", 30);

    // The latest run's best checkpoint, on the text it learned.
    let o = karnna(&dir, &["eval", "--data", "short.txt"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let best = std::fs::read_to_string(dir.join("artifacts/tiny/best.txt")).unwrap();
    assert!(field(&out, "checkpoint").ends_with(best.trim()), "{out}");
    // 5580 characters, 5579 targets: 5 rows of 1115, the last 4 targets left out.
    assert!(
        out.contains("text=short.txt chars=5580 scored=5575 unknown=0\n"),
        "{out}"
    );
    assert!(out.contains("rows=5 steps=100 unscored_tail=4\n"), "{out}");
    assert!(!out.contains("unknown_chars"), "{out}");
    let loss = number(&out, "loss_nats_per_char");
    // A model that learned nothing scores ln 25 (SHORT's 25 characters, uniform); one that
    // learned only how often each character comes, the text's unigram entropy. A model that
    // learned from context scores below that.
    let mut counts = std::collections::HashMap::new();
    for c in SHORT.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    assert_eq!(counts.len(), 25);
    let n = SHORT.chars().count() as f64;
    let unigram: f64 = counts
        .values()
        .map(|&k| -(k as f64 / n) * (k as f64 / n).ln())
        .sum();
    assert!(
        loss > 0.0 && loss < unigram,
        "{loss} against {unigram}: {out}"
    );
    assert!(
        (number(&out, "bits_per_char") - loss / 2f64.ln()).abs() < 2e-4,
        "{out}"
    );
    assert!(
        (number(&out, "perplexity") - loss.exp()).abs() < 2e-3,
        "{out}"
    );
    assert!(number(&out, "chars_per_s") > 0.0, "{out}");

    // Chunk length does not matter: the state is carried from chunk to chunk.
    let o = karnna(
        &dir,
        &[
            "eval",
            "--run",
            "artifacts/tiny",
            "--data",
            "short.txt",
            "--num-steps",
            "7",
        ],
    );
    let (seven, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        (number(&seven, "loss_nats_per_char") - loss).abs() < 2e-4,
        "{seven}"
    );

    // Characters the vocabulary lacks are counted, listed and left out.
    std::fs::write(
        dir.join("odd.txt"),
        "Far «from» here, Zoe, it was the age of wisdom.\n",
    )
    .unwrap();
    let o = karnna(&dir, &["eval", "--data", "odd.txt"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("chars=48 scored=44 unknown=3 unknown_chars=\"«»Z\"\n"),
        "{out}"
    );
    assert!(number(&out, "loss_nats_per_char").is_finite(), "{out}");

    std::fs::write(dir.join("none.txt"), "«Z»").unwrap();
    std::fs::create_dir_all(dir.join("empty-run")).unwrap();
    for (line, needle) in [
        ("eval --data missing.txt", "missing.txt: no such file"),
        (
            "eval --data none.txt",
            "none.txt: 0 character(s) the model knows",
        ),
        (
            "eval --data short.txt --batch-size 0",
            "--batch-size must be at least 1",
        ),
        (
            "eval --data short.txt --num-steps 0",
            "--num-steps must be at least 1",
        ),
        (
            "eval --checkpoint nothing.ckpt --data short.txt",
            "nothing.ckpt: no such checkpoint",
        ),
        (
            "eval --checkpoint short.txt --data short.txt",
            "short.txt: not a karnna checkpoint",
        ),
        (
            "eval --run empty-run --data short.txt",
            "empty-run: no checkpoints in this run folder",
        ),
    ] {
        assert_one_line_error(&dir, line, needle);
    }
    // No run at all.
    let empty = workdir("eval-empty");
    std::fs::write(empty.join("short.txt"), SHORT).unwrap();
    assert_one_line_error(&empty, "eval --data short.txt", "no training run found");
}

#[test]
fn a_folder_of_texts_and_fine_tuning_from_the_command_line() {
    let dir = workdir("folder");
    let texts = dir.join("texts");
    std::fs::create_dir_all(&texts).unwrap();
    for (name, words) in [
        ("1.txt", "alpha beta. "),
        ("2.txt", "gamma delta. "),
        ("3.txt", "epsilon. "),
    ] {
        std::fs::write(texts.join(name), words.repeat(150)).unwrap();
    }
    let cfg = tiny_config();
    let o = karnna(&dir, &["info", "--config", &cfg, "--data", "texts"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("3 files: texts/1.txt, texts/2.txt, texts/3.txt"),
        "{out}"
    );
    assert!(out.contains("the last part of each file"), "{out}");
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--config", &cfg, "--max-iters", "3", "--plain"];
        args.extend_from_slice(extra);
        karnna(&dir, &args)
    };
    let o = train(&["--data", "texts", "--run-dir", "base"]);
    assert!(o.status.success(), "{:?}", text(&o));

    // Fine-tune on a text with characters the base lacks: they join the vocabulary.
    std::fs::write(dir.join("new.txt"), "猫坐在垫子上。alpha. ".repeat(200)).unwrap();
    let ckpt = std::fs::read_dir(dir.join("base"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.ends_with(".ckpt"))
        .unwrap();
    let base = format!("base/{ckpt}");
    let o = train(&[
        "--data",
        "new.txt",
        "--run-dir",
        "tuned",
        "--init-from",
        &base,
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("7 new to the checkpoint"), "{out}");
    assert!(out.contains("fine-tuning:     from base/"), "{out}");
    let o = karnna(
        &dir,
        &[
            "sample", "--run", "tuned", "--len", "50", "--seed", "1", "--prime", "猫",
        ],
    );
    assert!(o.status.success(), "{:?}", text(&o));

    // Bad input: one line, exit 2, naming the file.
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    assert_one_line_error(
        &dir,
        "info --config TINY --data empty",
        "empty: no .txt files in this folder",
    );
    std::fs::write(texts.join("4.txt"), b"fine \xfe then not").unwrap();
    assert_one_line_error(
        &dir,
        "info --config TINY --data texts",
        "4.txt: not valid UTF-8 at byte 5",
    );
    assert_one_line_error(
        &dir,
        "train --config TINY --data new.txt --run-dir x --init-from nope.ckpt",
        "nope.ckpt",
    );
}

#[test]
fn several_samples_in_one_batch_and_a_prime_from_a_file() {
    let dir = trained("many", 10);
    let sample = |extra: &[&str]| {
        let mut args = vec!["sample", "--seed", "5", "--len", "60", "--precision", "f32"];
        args.extend_from_slice(extra);
        let o = karnna(&dir, &args);
        assert!(o.status.success(), "{extra:?}: {}", text(&o).1);
        text(&o).0
    };

    // Three samples: each after its separator, each the prime and 60 characters; the first is
    // the single sample of the same seed.
    let single = sample(&[]);
    assert_eq!(sample(&["--num-samples", "1"]), single);
    let three = sample(&["--num-samples", "3"]);
    assert_eq!(three.matches("--- sample ").count(), 3, "{three}");
    // A newline ends each sample (the last one's is the one every sample run ends with).
    let parts: Vec<&str> = three
        .split("--- sample ")
        .enumerate()
        .map(|(k, part)| match k {
            0 => part,
            k => part
                .strip_prefix(&format!("{k} of 3 ---\n"))
                .and_then(|p| p.strip_suffix('\n'))
                .unwrap_or_else(|| panic!("sample {k}: {three}")),
        })
        .collect();
    let [head, parts @ ..] = parts.as_slice() else {
        unreachable!()
    };
    assert_eq!((*head, parts.len()), ("", 3), "{three}");
    for p in parts {
        assert!(p.starts_with("Far"), "{p:?}");
        assert_eq!(p.chars().count(), 63, "{p:?}");
    }
    assert_eq!(format!("{}\n", parts[0]), single);
    assert!(
        parts[0] != parts[1] && parts[1] != parts[2] && parts[0] != parts[2],
        "{three}"
    );

    // A prime from a file (CRLF read as LF) is the same prime as on the command line.
    std::fs::write(dir.join("prime.txt"), "Far from\r\nhere").unwrap();
    assert_eq!(
        sample(&["--prime-file", "prime.txt"]),
        sample(&["--prime", "Far from\nhere"])
    );
    assert!(sample(&["--prime-file", "prime.txt"]).starts_with("Far from\nhere"));

    std::fs::write(dir.join("empty.txt"), "").unwrap();
    std::fs::write(dir.join("bad.txt"), b"Fa\xffr").unwrap();
    for (line, needle) in [
        ("sample --num-samples 0", "--num-samples must be at least 1"),
        (
            "sample --prime-file missing.txt",
            "missing.txt: no such file",
        ),
        (
            "sample --prime-file bad.txt",
            "bad.txt: not valid UTF-8 at byte 2",
        ),
        (
            "sample --prime-file empty.txt",
            "empty.txt: the file is empty",
        ),
    ] {
        assert_one_line_error(&dir, line, needle);
    }
    // Both primes at once: clap refuses, with its usage.
    let o = karnna(
        &dir,
        &["sample", "--prime", "Far", "--prime-file", "prime.txt"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o).1);
}
