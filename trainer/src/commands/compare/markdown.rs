//! `report.md`: the numbers of `report.json` as tables, with every definition they rest on.

use std::fmt::Write as _;

use super::report::{CscaleMetric, CscaleRange, Report};
use super::stats::Spread;

/// `mean ± std [min .. max]` (`-` when missing; no `± std` with one seed).
fn spread(s: &Option<Spread>, digits: usize) -> String {
    let Some(s) = s else { return "-".into() };
    let std = s
        .std
        .map(|d| format!(" ± {d:.digits$}"))
        .unwrap_or_default();
    match s.n {
        1 => format!("{:.digits$}", s.mean),
        _ => format!(
            "{:.digits$}{std} [{:.digits$} .. {:.digits$}]",
            s.mean, s.min, s.max
        ),
    }
}

/// A signed gap with its standard error: `+0.00152 ± 0.00040` (no `±` without one).
fn gap(v: Option<f64>, se: Option<f64>, digits: usize) -> String {
    let se = se.map(|e| format!(" ± {e:.digits$}")).unwrap_or_default();
    match v {
        Some(_) => number(v, digits, true) + &se,
        None => "-".into(),
    }
}

fn number(v: Option<f64>, digits: usize, signed: bool) -> String {
    match (v, signed) {
        (Some(v), true) => format!("{v:+.digits$}"),
        (Some(v), false) => format!("{v:.digits$}"),
        (None, _) => "-".into(),
    }
}

/// The whole of `report.md` for the sweep `title`.
pub fn render(title: &str, report: &Report) -> String {
    let base = &report.baseline;
    let seeds: Vec<String> = report.seeds.iter().map(u64::to_string).collect();
    let mut md = format!(
        "# {title}\n\nBaseline: `{base}`. Each recipe ran {} time(s), with job seed(s) {}.\n\n",
        report.seeds.len(),
        seeds.join(", ")
    );
    md += "## Validation loss\n\n| recipe | final val loss | best val loss | perplexity | \
           gap to baseline | relative gap | tokens/s | speed ratio | curves separate |\n\
           |---|---|---|---|---|---|---|---|---|\n";
    for r in &report.recipes {
        let percent = |v: Option<f64>| v.map(|g| 100.0 * g);
        let relative = match r.val_gap_relative {
            Some(_) => {
                gap(
                    percent(r.val_gap_relative),
                    percent(r.val_gap_relative_se),
                    3,
                ) + "%"
            }
            None => "-".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.recipe,
            spread(&r.final_val_loss, 4),
            spread(&r.best_val_loss, 4),
            spread(&r.final_val_perplexity, 3),
            gap(r.val_gap, r.val_gap_se, 5),
            relative,
            number(r.tokens_per_s, 0, false),
            number(r.speed_ratio, 3, false),
            r.separation,
        );
    }
    if report
        .recipes
        .iter()
        .any(|r| r.final_val_accuracy.is_some())
    {
        md += "\n## Validation accuracy\n\n| recipe | final accuracy | best accuracy | \
               gap to baseline (points) |\n|---|---|---|---|\n";
        for r in &report.recipes {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                r.recipe,
                spread(&r.final_val_accuracy, 4),
                spread(&r.best_val_accuracy, 4),
                gap(
                    r.val_accuracy_gap.map(|g| 100.0 * g),
                    r.val_accuracy_gap_se.map(|g| 100.0 * g),
                    2
                ),
            );
        }
    }
    if let Some(cscale) = &report.cscale {
        md += &cscale_section(cscale, base);
    }
    md += &definitions(base);
    md
}

fn cscale_section(cscale: &CscaleRange, base: &str) -> String {
    let (name, rule) = match cscale.metric {
        CscaleMetric::ValAccuracy => (
            "final validation accuracy",
            format!("accuracy / accuracy of `{base}`"),
        ),
        CscaleMetric::ValPerplexity => (
            "final validation perplexity (the data has no accuracy)",
            format!("perplexity of `{base}` / perplexity"),
        ),
    };
    let mut md = format!(
        "\n## FP8-CSCALE bias range\n\nCriterion (Perez et al.): a bias is usable when FP8 \
         keeps at least {:.1}% of the baseline, measured on the mean {name}: kept = {rule} >= \
         {}. Baseline: {}.\n\n| bias | value | kept | usable |\n|---|---|---|---|\n",
        100.0 * cscale.threshold,
        cscale.threshold,
        number(cscale.baseline, 4, false),
    );
    for p in &cscale.points {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            p.bias,
            number(p.value, 4, false),
            number(p.kept, 4, false),
            if p.passes { "yes" } else { "no" },
        );
    }
    let range = match cscale.usable_range {
        Some([lo, hi]) => format!("{lo} ..= {hi}"),
        None => "none".into(),
    };
    let _ = write!(
        md,
        "\nUsable range: **{range}** (the widest run of consecutive swept biases that all \
         pass; on a tie, the lowest).\n"
    );
    md
}

fn definitions(base: &str) -> String {
    format!(
        "\n## Definitions\n\n\
         - Each number is computed per run from its own `metrics.csv`, then summarised over \
           the recipe's seeds as mean ± sample standard deviation (n - 1) [min .. max]; one \
           seed shows the value alone.\n\
         - Final val loss: at the run's last evaluation. Best val loss: the lowest finite \
           evaluation, step 0 included. Perplexity: exp(final val loss) of each run.\n\
         - Accuracy (classification data): the fraction of validation examples whose gold \
           label word scores highest (`val_accuracy` of metrics.csv), final and highest.\n\
         - Gap to baseline: final val loss minus that of the `{base}` run of the same seed, \
           mean over seeds; relative gap: that difference divided by the `{base}` run's final \
           val loss, mean over seeds. The accuracy gap likewise, in points. `± e`: the standard \
           error of that mean, the sample standard deviation of the per-seed gaps over \
           sqrt(seeds) (the seeds pair the runs: same data order).\n\
         - Tokens/s: the median of the run's own per-step throughput (forward, backward, \
           optimizer step), then the mean over seeds; speed ratio: that over `{base}`'s.\n\
         - Curves separate: the first evaluation step at which |mean val loss of the recipe \
           - mean val loss of `{base}`| (means over seeds) exceeds the sum of the two recipes' \
           seed ranges (max - min over seeds) at that step; only steps after step 0 where every \
           run of both has a finite val loss count (step 0 evaluates the initial model, which \
           a fine-tune shares across seeds: it has no spread). `none`: at no such step; `n/a (one seed)`: one seed \
           has no range.\n"
    )
}
