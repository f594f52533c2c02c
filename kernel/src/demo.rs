//! `safe-data demo DIR`: a deterministic synthetic hospital dataset (no
//! download) and a commented configuration showing every policy feature.
//!
//! About 100,000 COVID-19 patients. Comorbidities depend on age and each
//! other, and deaths depend on age and comorbidities through a logistic
//! model, so an analysis finds real signal. A lab table (several rows per
//! patient, CSV) exercises joins; a public region table exercises public data.

use polars::prelude::*;
use std::path::Path;

pub const DEFAULT_PATIENTS: usize = 100_000;
const SEED: u64 = 20_200_311;

const REGIONS: &[(&str, i64, i64, f64)] = &[
    // name, population, hospital beds, relative share of patients
    ("North", 1_850_000, 5_600, 0.18),
    ("South", 2_400_000, 6_900, 0.24),
    ("East", 1_300_000, 3_100, 0.13),
    ("West", 1_700_000, 5_200, 0.17),
    ("Central", 2_900_000, 9_800, 0.28),
];

const FIRST: &[&str] = &["Ana", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kira", "Liam", "Maya", "Noah", "Olga", "Pavel"];
const LAST: &[&str] = &["Garcia", "Smith", "Müller", "Rossi", "Dubois", "Kowalski", "Silva", "Jensen", "Novak", "Haddad", "Okafor", "Tanaka"];

fn logistic(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// A normal variate (Box–Muller).
fn normal(rng: &mut fastrand::Rng, mean: f64, sd: f64) -> f64 {
    let u1 = rng.f64().max(1e-12);
    let u2 = rng.f64();
    mean + sd * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn days(y: i32, m: u32, d: u32) -> i32 {
    // Days since 1970-01-01 (civil-from-days inverse, Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i32;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i32 - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

fn to_err(e: PolarsError) -> String {
    format!("cannot write the demo data: {e}")
}

/// Writes `DIR/data/*` and `DIR/safe-data.toml`.
pub fn write_demo(dir: &Path, patients: usize) -> Result<(), String> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    let mut rng = fastrand::Rng::with_seed(SEED);

    let n = patients;
    let mut patient_id = Vec::with_capacity(n);
    let mut name = Vec::with_capacity(n);
    let mut birth = Vec::with_capacity(n);
    let mut sex = Vec::with_capacity(n);
    let mut age = Vec::with_capacity(n);
    let mut region = Vec::with_capacity(n);
    let mut admitted = Vec::with_capacity(n);
    let mut cols: Vec<Vec<i32>> = (0..8).map(|_| Vec::with_capacity(n)).collect(); // comorbidities
    let mut pneumonia = Vec::with_capacity(n);
    let mut icu = Vec::with_capacity(n);
    let mut intubated = Vec::with_capacity(n);
    let mut died = Vec::with_capacity(n);
    let mut stay = Vec::with_capacity(n);
    let mut bmi = Vec::with_capacity(n);
    let start = days(2020, 3, 1);
    let span_days = days(2021, 12, 31) - start;

    for i in 0..n {
        patient_id.push(100_000 + i as i64);
        name.push(format!("{} {}", FIRST[rng.usize(..FIRST.len())], LAST[rng.usize(..LAST.len())]));
        // Ages 0..=104, drawn again when out of range (no pile-up at the ends).
        let a = loop {
            let a = normal(&mut rng, 52.0, 19.0).round();
            if (0.0..=104.0).contains(&a) {
                break a;
            }
        };
        age.push(a as i64);
        let female = rng.f64() < 0.49;
        sex.push(if female { "F" } else { "M" });
        // Waves of admissions: more in winter.
        let mut day;
        loop {
            day = rng.i32(0..=span_days);
            let season = ((day as f64 / 365.0 * std::f64::consts::TAU).cos() + 1.3) / 2.3;
            if rng.f64() < season {
                break;
            }
        }
        admitted.push(start + day);
        birth.push(start + day - (a * 365.25) as i32 - rng.i32(0..365));
        let r = rng.f64();
        let mut acc = 0.0;
        let mut chosen = REGIONS[REGIONS.len() - 1].0;
        for (name, _, _, share) in REGIONS {
            acc += share;
            if r < acc {
                chosen = name;
                break;
            }
        }
        region.push(chosen);
        let age_z = (a - 50.0) / 20.0;
        let b = normal(&mut rng, 27.5 + 1.2 * age_z, 5.0).clamp(14.0, 65.0);
        bmi.push((b * 10.0).round() / 10.0);
        let obese = b >= 30.0;
        let p = |x: f64, rng: &mut fastrand::Rng| i32::from(rng.f64() < logistic(x));
        let diabetes = p(-2.6 + 0.9 * age_z + if obese { 0.9 } else { 0.0 }, &mut rng);
        let hypertension = p(-1.6 + 1.1 * age_z + if obese { 0.6 } else { 0.0 }, &mut rng);
        let asthma = p(-2.7 - 0.1 * age_z, &mut rng);
        let copd = p(-3.6 + 1.0 * age_z, &mut rng);
        let ckd = p(-3.8 + 1.1 * age_z + 0.8 * diabetes as f64, &mut rng);
        let immuno = p(-3.5, &mut rng);
        let smoker = p(-1.8 - 0.2 * age_z + if female { -0.3 } else { 0.0 }, &mut rng);
        for (slot, v) in cols.iter_mut().zip([diabetes, hypertension, i32::from(obese), asthma, copd, ckd, immuno, smoker]) {
            slot.push(v);
        }
        let risk = 0.9 * age_z
            + 0.5 * diabetes as f64
            + 0.3 * hypertension as f64
            + 0.4 * i32::from(obese) as f64
            + 0.6 * copd as f64
            + 0.8 * ckd as f64
            + 0.7 * immuno as f64
            + 0.2 * smoker as f64
            + if female { -0.3 } else { 0.0 };
        let pn = p(-0.9 + 0.8 * risk, &mut rng);
        let in_icu = p(-2.8 + 0.7 * risk + 1.2 * pn as f64, &mut rng);
        let tube = if in_icu == 1 { p(-0.4 + 0.5 * risk, &mut rng) } else { 0 };
        let death = p(-3.7 + 1.0 * risk + 0.9 * pn as f64 + 1.1 * in_icu as f64 + 1.0 * tube as f64, &mut rng);
        pneumonia.push(pn);
        icu.push(in_icu);
        intubated.push(tube);
        died.push(death);
        let base = 4.0 + 2.0 * risk.max(0.0) + 6.0 * in_icu as f64 + 5.0 * tube as f64;
        let length = (base * (-rng.f64().max(1e-9).ln()) * 0.8 + 1.0).round().clamp(1.0, 150.0);
        stay.push(length as i64);
    }

    let date = |name: &str, v: Vec<i32>| -> Result<Column, String> { Column::new(name.into(), v).cast(&DataType::Date).map_err(to_err) };
    let flag_names = ["diabetes", "hypertension", "obesity", "asthma", "copd", "ckd", "immunosuppressed", "smoker"];
    let mut columns = vec![
        Column::new("patient_id".into(), &patient_id),
        Column::new("name".into(), &name),
        date("birth_date", birth)?,
        Column::new("sex".into(), &sex),
        Column::new("age".into(), &age),
        Column::new("region".into(), &region),
        date("admission_date", admitted.clone())?,
    ];
    for (flag, values) in flag_names.iter().zip(cols) {
        columns.push(Column::new((*flag).into(), values));
    }
    columns.extend([
        Column::new("pneumonia".into(), pneumonia),
        Column::new("icu".into(), icu),
        Column::new("intubated".into(), intubated),
        Column::new("died".into(), died),
        Column::new("length_of_stay".into(), stay),
        Column::new("bmi".into(), bmi),
    ]);
    let mut patients_df = DataFrame::new_infer_height(columns).map_err(to_err)?;
    let file = std::fs::File::create(data.join("patients.parquet")).map_err(|e| format!("cannot write patients.parquet: {e}"))?;
    ParquetWriter::new(file).finish(&mut patients_df).map_err(to_err)?;

    // Labs: 1 to 5 measurements per patient.
    let (mut lab_pid, mut lab_test, mut lab_value, mut lab_day) = (vec![], vec![], vec![], vec![]);
    let ages = patients_df.column("age").map_err(to_err)?.i64().map_err(to_err)?.clone();
    let deaths = patients_df.column("died").map_err(to_err)?.i32().map_err(to_err)?.clone();
    for i in 0..n {
        let sick = deaths.get(i).unwrap_or(0) as f64;
        let a = ages.get(i).unwrap_or(50) as f64;
        for k in 0..rng.usize(1..=5) {
            let (test, value) = match rng.usize(0..3) {
                0 => ("crp", normal(&mut rng, 40.0 + 60.0 * sick + 0.3 * a, 25.0).clamp(0.5, 400.0)),
                1 => ("d_dimer", normal(&mut rng, 0.8 + 1.5 * sick, 0.6).clamp(0.1, 20.0)),
                _ => ("lymphocytes", normal(&mut rng, 1.5 - 0.6 * sick, 0.5).clamp(0.1, 6.0)),
            };
            lab_pid.push(patient_id[i]);
            lab_test.push(test);
            lab_value.push((value * 100.0).round() / 100.0);
            lab_day.push(admitted[i] + k as i32);
        }
    }
    let mut labs_df = DataFrame::new_infer_height(vec![
        Column::new("patient_id".into(), lab_pid),
        Column::new("test".into(), lab_test),
        Column::new("value".into(), lab_value),
        date("taken_on", lab_day)?,
    ])
    .map_err(to_err)?;
    let file = std::fs::File::create(data.join("labs.csv")).map_err(|e| format!("cannot write labs.csv: {e}"))?;
    CsvWriter::new(file).finish(&mut labs_df).map_err(to_err)?;

    let mut regions_df = DataFrame::new_infer_height(vec![
        Column::new("region".into(), REGIONS.iter().map(|r| r.0).collect::<Vec<_>>()),
        Column::new("population".into(), REGIONS.iter().map(|r| r.1).collect::<Vec<_>>()),
        Column::new("beds".into(), REGIONS.iter().map(|r| r.2).collect::<Vec<_>>()),
    ])
    .map_err(to_err)?;
    let file = std::fs::File::create(data.join("regions.csv")).map_err(|e| format!("cannot write regions.csv: {e}"))?;
    CsvWriter::new(file).finish(&mut regions_df).map_err(to_err)?;

    std::fs::write(dir.join("safe-data.toml"), DEMO_CONFIG).map_err(|e| format!("cannot write safe-data.toml: {e}"))?;
    Ok(())
}

const DEMO_CONFIG: &str = r#"# Safe Data demo configuration: a synthetic COVID-19 hospital dataset.
# Paths are relative to this file. `safe-data config check safe-data.toml` validates it.

[server]
display_name = "Safe Data (demo hospital)"
state_dir = "state"        # audit log, per-user history
max_rows = 1000            # most rows any released result may have
query_timeout_s = 60       # longer queries are stopped
max_memory_mb = 4096       # memory budget of the kernel; a query that exceeds it is stopped
max_message_mb = 64        # larger Jupyter messages are dropped unread

[policy]
min_group_size = 10        # k: distinct patients behind every released row

[tables.patients]
source = "data/patients.parquet"
description = "One row per admitted COVID-19 patient (synthetic)"
privacy_unit = "patient_id"          # the column that identifies a person
join_keys = ["patient_id", "region"]

[tables.patients.columns]
patient_id       = { role = "identifier", description = "Hospital number" }
# name and birth_date are not listed: unlisted columns are hidden (fail closed).
sex              = { role = "dimension", description = "F or M" }
age              = { role = "dimension", bounds = [0, 110], description = "Age at admission, years" }
region           = { role = "dimension", description = "Region of residence" }
admission_date   = { role = "dimension" }
diabetes         = { role = "dimension", bounds = [0, 1] }
hypertension     = { role = "dimension", bounds = [0, 1] }
obesity          = { role = "dimension", bounds = [0, 1], description = "BMI of 30 or more" }
asthma           = { role = "dimension", bounds = [0, 1] }
copd             = { role = "dimension", bounds = [0, 1], description = "Chronic obstructive pulmonary disease" }
ckd              = { role = "dimension", bounds = [0, 1], description = "Chronic kidney disease" }
immunosuppressed = { role = "dimension", bounds = [0, 1] }
smoker           = { role = "dimension", bounds = [0, 1] }
pneumonia        = { role = "dimension", bounds = [0, 1] }
icu              = { role = "dimension", bounds = [0, 1], description = "Admitted to intensive care" }
intubated        = { role = "dimension", bounds = [0, 1] }
died             = { role = "dimension", bounds = [0, 1], description = "1 if the patient died in hospital" }
# Measures only appear inside aggregates. Order statistics (median, min, max,
# quantiles) return one person's value, so they must be allowed explicitly.
length_of_stay   = { role = "measure", bounds = [0, 120], aggregates = ["median", "quantile"], description = "Days in hospital" }
bmi              = { role = "measure", bounds = [10, 70], aggregates = ["median"], description = "Body-mass index" }

[tables.labs]
source = "data/labs.csv"
description = "Laboratory results, several per patient"
privacy_unit = "patient_id"
join_keys = ["patient_id"]
min_group_size = 15                  # stricter than the default for this table

[tables.labs.columns]
patient_id = { role = "identifier" }
test       = { role = "dimension", description = "crp, d_dimer or lymphocytes" }
value      = { role = "measure", bounds = [0, 400] }
taken_on   = { role = "dimension" }

[tables.regions]
source = "data/regions.csv"
description = "Population and hospital beds per region (public figures)"
public = true
"#;
