//! `kernlet image`: import, pull, list and remove images of the store.

use super::{ImageCmd, Output, StoreArgs};

pub fn image(cmd: ImageCmd) -> anyhow::Result<()> {
    use kernlet::runtime::image::{ImageStore, layout};
    let open = |store: &StoreArgs| {
        anyhow::ensure!(
            store.image_dir.is_absolute(),
            "--image-dir must be an absolute path, got {:?}",
            store.image_dir
        );
        let s = ImageStore::open(&store.image_dir)?;
        s.clean_tmp();
        Ok(s)
    };
    match cmd {
        ImageCmd::Import {
            source,
            name,
            store,
        } => {
            let store = open(&store)?;
            for i in layout::import(&store, &source, name.as_deref())? {
                println!("imported {} {}", i.reference, i.image.id);
            }
        }
        ImageCmd::Pull {
            image,
            registries,
            store,
        } => {
            let store = open(&store)?;
            let reference = kernlet::model::image_ref::ImageRef::parse(&image)?;
            let puller = kernlet::runtime::image::pull::Puller::new(store, registries.config()?);
            let record = kernlet::node::tokio_runtime()?.block_on(puller.pull(&reference, &[]))?;
            println!("pulled {reference} {}", record.id);
        }
        ImageCmd::Ls { output, store } => {
            let list = open(&store)?.list()?;
            match output.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Output::Table => {
                    println!("{:<60} {:<19} {:>10}", "IMAGE", "IMAGE ID", "SIZE");
                    for l in &list {
                        let id = l.image.id.trim_start_matches("sha256:");
                        let names = if l.references.is_empty() {
                            vec!["<none>".to_string()]
                        } else {
                            l.references.clone()
                        };
                        for n in names {
                            println!(
                                "{:<60} {:<19} {:>10}",
                                n,
                                &id[..id.len().min(13)],
                                human_bytes(l.image.size)
                            );
                        }
                    }
                }
            }
        }
        ImageCmd::Rm { image, store } => {
            let removed = open(&store)?.remove(&image)?;
            for r in &removed.references {
                println!("untagged {r}");
            }
            for i in &removed.images {
                println!("deleted {i}");
            }
            println!(
                "freed {} layers and {} blobs",
                removed.layers, removed.blobs
            );
        }
    }
    Ok(())
}

/// A byte count as `kubectl` and `crictl` show sizes (`1.1MB`).
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}
