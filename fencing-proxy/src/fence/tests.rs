use super::*;
use proptest::prelude::*;

fn open(dir: &Path) -> FenceStore {
    FenceStore::open(dir).expect("open fence store")
}

fn assert_damaged(fence: &Fence) {
    assert!(matches!(fence, Fence::Damaged(_)), "{fence:?}");
}

#[test]
fn store_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<FenceStore>();
    check::<std::sync::Arc<FenceStore>>();
}

#[test]
fn new_export_raise_persists_and_never_lowers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.load("disk0"), Fence::Known(0));
    assert_eq!(store.raise("disk0", 0).unwrap(), 0);
    assert!(
        !store.path_of("disk0").exists(),
        "raise to 0 writes nothing"
    );
    assert_eq!(store.raise("disk0", 5).unwrap(), 5);
    assert_eq!(store.raise("disk0", 9).unwrap(), 9);
    assert_eq!(store.load("disk0"), Fence::Known(9));
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.load("disk0"), Fence::Known(9));
    let before = fs::read(store.path_of("disk0")).unwrap();
    assert_eq!(store.raise("disk0", 3).unwrap(), 9);
    assert_eq!(store.raise("disk0", 9).unwrap(), 9);
    assert_eq!(
        fs::read(store.path_of("disk0")).unwrap(),
        before,
        "no write"
    );
    assert_eq!(store.load("disk0"), Fence::Known(9));
    assert_eq!(store.raise("disk0", u64::MAX).unwrap(), u64::MAX);
    assert_eq!(store.load("disk0"), Fence::Known(u64::MAX));
    assert_eq!(store.load("other"), Fence::Known(0));
    assert_eq!(
        store.list(),
        vec![("disk0".to_owned(), Fence::Known(u64::MAX))]
    );
    assert_eq!(before.len(), FILE_SIZE);
}

#[test]
fn a_used_up_sequence_is_damage_not_a_crash() {
    // Found by the `fence` fuzz target: a file whose slots carry the
    // largest sequence (valid checksums) made the next raise panic.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.raise("disk0", 5).unwrap(), 5);
    fs::write(store.path_of("disk0"), encode_file("disk0", u64::MAX, 9)).unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store.load("disk0"),
        Fence::Known(9),
        "the value still reads"
    );
    match store.raise("disk0", 10) {
        Err(FenceError::Damaged {
            damage: Damage::SequenceExhausted { .. },
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(store.load("disk0"), Fence::Known(9), "nothing was written");
}

#[test]
fn open_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("a/b/state");
    let store = open(&state);
    assert_eq!(store.raise("x", 1).unwrap(), 1);
    assert!(state.join(MANIFEST_NAME).exists());
    assert!(state.join(LOCK_NAME).exists());
}

#[test]
fn second_open_is_locked_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    match FenceStore::open(dir.path()) {
        Err(FenceError::Locked { dir: locked }) => assert_eq!(locked, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(store);
    let _store = open(dir.path());
}

/// A store with `export` raised to 7 and then 42 (both slots: seq 2, 42).
fn store_at_42(dir: &Path, export: &str) -> (FenceStore, Vec<u8>) {
    let store = open(dir);
    assert_eq!(store.raise(export, 7).unwrap(), 7);
    assert_eq!(store.raise(export, 42).unwrap(), 42);
    let bytes = fs::read(store.path_of(export)).unwrap();
    assert_eq!(bytes.len(), FILE_SIZE);
    (store, bytes)
}

#[test]
fn every_truncation_reads_the_fence_or_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let (store, bytes) = store_at_42(dir.path(), "disk0");
    let path = store.path_of("disk0");
    for len in 0..=FILE_SIZE {
        fs::write(&path, &bytes[..len]).unwrap();
        let fence = store.load("disk0");
        if len >= SLOT_OFFSETS[1] {
            // Slot A is whole.
            assert_eq!(fence, Fence::Known(42), "truncated to {len}");
        } else {
            assert_damaged(&fence);
        }
    }
}

#[test]
fn raise_after_truncation_of_slot_b_keeps_the_fence() {
    let dir = tempfile::tempdir().unwrap();
    let (store, bytes) = store_at_42(dir.path(), "disk0");
    let path = store.path_of("disk0");
    fs::write(&path, &bytes[..SLOT_OFFSETS[1] + 10]).unwrap();
    assert_eq!(store.raise("disk0", 43).unwrap(), 43);
    assert_eq!(fs::metadata(&path).unwrap().len(), 12288);
    drop(store);
    assert_eq!(open(dir.path()).load("disk0"), Fence::Known(43));
}

/// Tear points inside a slot: every byte of the used part, some padding.
fn tear_points() -> Vec<usize> {
    (0..=SLOT_USED_SIZE + 1)
        .chain([100, 511, 512, 513, 2048, BLOCK_SIZE - 1, BLOCK_SIZE])
        .collect()
}

/// The slot `new` written over `old` up to `at`; the rest is `old`'s
/// bytes, zeros (sectors not written) or garbage.
fn torn(new: &[u8], old: &[u8], at: usize, rest: u8) -> Vec<u8> {
    let mut block = new[..at].to_vec();
    match rest {
        0 => block.extend_from_slice(&old[at..]),
        1 => block.resize(BLOCK_SIZE, 0),
        _ => block.resize(BLOCK_SIZE, 0xa5),
    }
    block
}

fn with_slots(bytes: &[u8], a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut file = bytes[..BLOCK_SIZE].to_vec();
    file.extend_from_slice(a);
    file.extend_from_slice(b);
    file
}

#[test]
fn torn_writes_read_the_old_or_the_new_fence() {
    let dir = tempfile::tempdir().unwrap();
    let (store, bytes) = store_at_42(dir.path(), "disk0");
    let path = store.path_of("disk0");
    let old = bytes[SLOT_OFFSETS[0]..SLOT_OFFSETS[1]].to_vec();
    assert_eq!(old, bytes[SLOT_OFFSETS[1]..]);
    assert_eq!(decode_slot(&old, name_crc("disk0")).unwrap().seq, 2);
    let new = encode_slot(name_crc("disk0"), 3, 99);
    for at in tear_points() {
        for rest in 0..3 {
            let slot = torn(&new, &old, at, rest);
            // Tear in A, written first: B still holds 42.
            fs::write(&path, with_slots(&bytes, &slot, &old)).unwrap();
            let fence = store.load("disk0");
            let whole = at == BLOCK_SIZE || (at >= SLOT_USED_SIZE && rest != 2);
            let expect = if whole { 99 } else { 42 };
            assert_eq!(fence, Fence::Known(expect), "A torn at {at}, rest {rest}");
            // Tear in B, after A was synced: A holds 99.
            fs::write(&path, with_slots(&bytes, &new, &slot)).unwrap();
            assert_eq!(
                store.load("disk0"),
                Fence::Known(99),
                "B torn at {at}, rest {rest}"
            );
        }
    }
    // Crash between the two writes: A new, B old.
    fs::write(&path, with_slots(&bytes, &new, &old)).unwrap();
    assert_eq!(store.load("disk0"), Fence::Known(99));
}

#[test]
fn raise_after_a_crash_writes_the_stale_slot_first() {
    let crc = name_crc("disk0");
    let old = encode_slot(crc, 2, 42);
    let new = encode_slot(crc, 3, 99);
    let next = encode_slot(crc, 4, 120);
    let bad = [0u8; BLOCK_SIZE];
    let dir = tempfile::tempdir().unwrap();
    let (store, bytes) = store_at_42(dir.path(), "disk0");
    let path = store.path_of("disk0");
    // (A, B, the current fence) after some crash or damage.
    let cases: [(&[u8], &[u8], u64); 5] = [
        (&old, &old, 42),
        (&new, &old, 99),
        (&old, &new, 99),
        (&bad, &old, 42),
        (&old, &bad, 42),
    ];
    for (a, b, current) in cases {
        let file = with_slots(&bytes, a, b);
        let slots = decode_file(&file, "disk0", &path).unwrap();
        assert_eq!(slots.winner().1.fence, current);
        let order = slots.write_order();
        // The next raise (to 120) tears its first write anywhere, or
        // crashes between its writes: the fence never drops.
        for at in tear_points() {
            let mut after = [a.to_vec(), b.to_vec()];
            after[order[0]] = torn(&next, &after[order[0]], at, 0);
            fs::write(&path, with_slots(&bytes, &after[0], &after[1])).unwrap();
            let fence = store.load("disk0").known().expect("readable");
            assert!(fence == current || fence == 120, "{fence} at {at}");
            // And a tear of its second write, after the first completed.
            let mut after = [a.to_vec(), b.to_vec()];
            after[order[0]] = next.to_vec();
            after[order[1]] = torn(&next, &after[order[1]], at, 0);
            fs::write(&path, with_slots(&bytes, &after[0], &after[1])).unwrap();
            assert_eq!(store.load("disk0"), Fence::Known(120));
        }
        // The store itself gets there from that state.
        fs::write(&path, &file).unwrap();
        assert_eq!(store.raise("disk0", 120).unwrap(), 120);
        let written = fs::read(&path).unwrap();
        assert_eq!(
            written[SLOT_OFFSETS[0]..SLOT_OFFSETS[1]],
            written[SLOT_OFFSETS[1]..]
        );
        assert_eq!(store.load("disk0"), Fence::Known(120));
    }
}

#[test]
fn single_byte_flips_in_one_slot_are_survived() {
    let dir = tempfile::tempdir().unwrap();
    let (store, bytes) = store_at_42(dir.path(), "disk0");
    let path = store.path_of("disk0");
    // Every byte of both slots, padding included (it must be zero).
    for at in BLOCK_SIZE..FILE_SIZE {
        for mask in [0x01, 0xff] {
            let mut file = bytes.clone();
            file[at] ^= mask;
            fs::write(&path, &file).unwrap();
            assert_eq!(store.load("disk0"), Fence::Known(42), "flip at {at}");
        }
    }
}

#[test]
fn flips_in_both_slots_or_the_header_are_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (store, bytes) = store_at_42(dir.path(), "disk0");
    let path = store.path_of("disk0");
    for at in (0..SLOT_USED_SIZE).chain([SLOT_USED_SIZE, 1000, BLOCK_SIZE - 1]) {
        let mut file = bytes.clone();
        file[SLOT_OFFSETS[0] + at] ^= 0x10;
        file[SLOT_OFFSETS[1] + (at * 7) % BLOCK_SIZE] ^= 0x01;
        fs::write(&path, &file).unwrap();
        match store.load("disk0") {
            Fence::Damaged(Damage::BothSlotsBad { .. }) => {}
            other => panic!("flip at {at}: {other:?}"),
        }
    }
    for at in 0..BLOCK_SIZE {
        let mut file = bytes.clone();
        file[at] ^= 0x04;
        fs::write(&path, &file).unwrap();
        match store.load("disk0") {
            Fence::Damaged(Damage::BadHeader { .. }) => {}
            other => panic!("header flip at {at}: {other:?}"),
        }
    }
    assert!(matches!(
        store.raise("disk0", 50),
        Err(FenceError::Damaged { .. })
    ));
}

#[test]
fn deleted_fence_file_is_missing_until_repair() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_at_42(dir.path(), "disk0");
    let path = store.path_of("disk0");
    fs::remove_file(&path).unwrap();
    let damage = Damage::Missing { path: path.clone() };
    assert_eq!(store.load("disk0"), Fence::Damaged(damage.clone()));
    assert!(damage.to_string().contains(&path.display().to_string()));
    match store.raise("disk0", 100) {
        Err(FenceError::Damaged { export, damage: d }) => {
            assert_eq!(export, "disk0");
            assert_eq!(d, damage);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store.list(),
        vec![("disk0".to_owned(), Fence::Damaged(damage))]
    );
    // Still missing after a restart.
    drop(store);
    let store = open(dir.path());
    assert_damaged(&store.load("disk0"));
    store.repair("disk0", 50).unwrap();
    assert_eq!(store.load("disk0"), Fence::Known(50));
    assert_eq!(store.list(), vec![("disk0".to_owned(), Fence::Known(50))]);
    assert_eq!(store.raise("disk0", 51).unwrap(), 51);
}

#[test]
fn repair_may_lower_and_fixes_any_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_at_42(dir.path(), "disk0");
    let path = store.path_of("disk0");
    fs::write(&path, b"garbage").unwrap();
    assert_damaged(&store.load("disk0"));
    store.repair("disk0", 10).unwrap();
    assert_eq!(store.load("disk0"), Fence::Known(10));
    store.repair("new", 3).unwrap();
    assert_eq!(store.load("new"), Fence::Known(3));
    assert_eq!(
        parse_manifest(&fs::read(store.manifest_path()).unwrap())
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn a_copied_fence_file_is_the_wrong_export() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.raise("a", 5).unwrap();
    store.raise("b", 500).unwrap();
    fs::copy(store.path_of("b"), store.path_of("a")).unwrap();
    let expect = Damage::WrongExport {
        path: store.path_of("a"),
        found: "b".into(),
    };
    assert_eq!(store.load("a"), Fence::Damaged(expect));
    assert!(store.raise("a", 600).is_err());
    assert_eq!(store.load("b"), Fence::Known(500));
    // Slots bound to another export are invalid even under a good header.
    let mut file = fs::read(store.path_of("a")).unwrap();
    file[..BLOCK_SIZE].copy_from_slice(&encode_header("a"));
    fs::write(store.path_of("a"), &file).unwrap();
    assert!(matches!(
        store.load("a"),
        Fence::Damaged(Damage::BothSlotsBad { .. })
    ));
}

fn corrupt_manifest(store: &FenceStore) {
    let path = store.manifest_path();
    let mut bytes = fs::read(&path).unwrap();
    bytes[12] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
}

#[test]
fn corrupt_manifest_damages_only_exports_without_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.raise("a", 5).unwrap();
    store.raise("b", 8).unwrap();
    fs::remove_file(store.path_of("b")).unwrap();
    corrupt_manifest(&store);
    assert_eq!(store.load("a"), Fence::Known(5));
    for export in ["b", "never-seen"] {
        match store.load(export) {
            Fence::Damaged(Damage::ManifestCorrupt { path, .. }) => {
                assert_eq!(path, store.path_of(export));
            }
            other => panic!("{export}: {other:?}"),
        }
        assert!(matches!(
            store.raise(export, 1),
            Err(FenceError::Damaged { .. })
        ));
    }
    // A raise works on a present file and leaves the manifest broken.
    assert_eq!(store.raise("a", 6).unwrap(), 6);
    assert_damaged(&store.load("never-seen"));
    assert_eq!(store.list(), vec![("a".to_owned(), Fence::Known(6))]);
    // Reopening does not paper over it either.
    drop(store);
    let store = open(dir.path());
    assert_damaged(&store.load("b"));
    // Repair rewrites the manifest from the files present plus `b`.
    store.repair("b", 9).unwrap();
    assert_eq!(store.load("a"), Fence::Known(6));
    assert_eq!(store.load("b"), Fence::Known(9));
    assert_eq!(store.load("never-seen"), Fence::Known(0));
    let names = parse_manifest(&fs::read(store.manifest_path()).unwrap()).unwrap();
    assert_eq!(names, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
    fs::remove_file(store.path_of("a")).unwrap();
    assert!(matches!(
        store.load("a"),
        Fence::Damaged(Damage::Missing { .. })
    ));
}

#[test]
fn missing_manifest_with_fence_files_is_like_a_corrupt_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.raise("a", 5).unwrap();
    fs::remove_file(store.manifest_path()).unwrap();
    assert_eq!(store.load("a"), Fence::Known(5));
    assert!(matches!(
        store.load("new"),
        Fence::Damaged(Damage::ManifestCorrupt { .. })
    ));
    drop(store);
    let store = open(dir.path());
    assert!(!store.manifest_path().exists(), "open does not guess");
    assert_damaged(&store.load("new"));
    store.repair("new", 0).unwrap();
    assert_eq!(store.load("new"), Fence::Known(0));
    assert_eq!(store.load("a"), Fence::Known(5));
    assert_eq!(store.load("other"), Fence::Known(0));
}

#[test]
fn empty_directory_without_manifest_is_new() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fs::remove_file(store.manifest_path()).unwrap();
    assert_eq!(store.load("a"), Fence::Known(0));
    assert_eq!(store.raise("a", 3).unwrap(), 3);
    // The raise wrote the manifest it had read as empty.
    assert_eq!(store.load("b"), Fence::Known(0));
    fs::remove_file(store.path_of("a")).unwrap();
    assert!(matches!(
        store.load("a"),
        Fence::Damaged(Damage::Missing { .. })
    ));
}

#[test]
fn unrecorded_fence_file_reads_and_is_recorded() {
    // A crash after renaming a new fence file into place, before the
    // manifest listed it.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.raise("a", 1).unwrap();
    let manifest = fs::read(store.manifest_path()).unwrap();
    store.raise("b", 4).unwrap();
    fs::write(store.manifest_path(), &manifest).unwrap();
    assert_eq!(store.load("b"), Fence::Known(4));
    assert_eq!(store.list().len(), 2);
    // The next raise records it, even one that writes no fence.
    assert_eq!(store.raise("b", 2).unwrap(), 4);
    let names = parse_manifest(&fs::read(store.manifest_path()).unwrap()).unwrap();
    assert!(names.contains("b"));
    // So does open.
    fs::write(store.manifest_path(), &manifest).unwrap();
    drop(store);
    let store = open(dir.path());
    fs::remove_file(store.path_of("b")).unwrap();
    assert!(matches!(
        store.load("b"),
        Fence::Damaged(Damage::Missing { .. })
    ));
}

#[test]
fn odd_and_long_names_stay_inside_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let long_ascii = "x".repeat(EXPORT_NAME_MAX);
    let long_unicode = "é".repeat(EXPORT_NAME_MAX / 2);
    let hex_max = "y".repeat(HEX_NAME_MAX / 2);
    let hashed_min = "y".repeat(HEX_NAME_MAX / 2 + 1);
    let names: Vec<String> = [
        "/",
        "..",
        ".",
        "../escape",
        "a/b",
        "日本語/..",
        "with\nnewline",
        "nul\0byte",
        "UPPER",
        "h",
    ]
    .iter()
    .map(|name| (*name).to_owned())
    .chain([long_ascii, long_unicode, hex_max, hashed_min])
    .collect();
    let store = open(dir.path());
    for (fence, name) in (1..).zip(&names) {
        let path = store.path_of(name);
        assert_eq!(path.parent(), Some(dir.path()), "{name:?}");
        let file_name = path.file_name().unwrap().to_str().unwrap();
        assert!(file_name.len() + TMP_SUFFIX.len() <= 255, "{file_name}");
        assert!(file_name.starts_with(FILE_PREFIX));
        assert_eq!(store.raise(name, fence).unwrap(), fence);
    }
    drop(store);
    let store = open(dir.path());
    let mut expect: Vec<(String, Fence)> = (1..)
        .zip(&names)
        .map(|(fence, name)| (name.clone(), Fence::Known(fence)))
        .collect();
    expect.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(store.list(), expect);
    for (fence, name) in (1..).zip(&names) {
        assert_eq!(store.load(name), Fence::Known(fence));
    }
    let entries = fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(entries, names.len() + 2, "fence files, MANIFEST, LOCK");
}

#[test]
fn file_names_are_stable() {
    // Part of the on-disk format: a change would lose every fence.
    assert_eq!(file_name_of("disk0"), "fence-6469736b30");
    assert_eq!(
        file_name_of(&"y".repeat(100)),
        format!("fence-{}", "79".repeat(100))
    );
    let hashed = file_name_of(&"y".repeat(101));
    assert_eq!(hashed.len(), FILE_PREFIX.len() + 1 + 32);
    assert_eq!(hashed, "fence-h52847ec6b587ab90da4619f0cde4034a");
    assert_ne!(file_name_of(&"y".repeat(102)), hashed);
}

#[test]
fn hashed_name_collision_is_wrong_export() {
    // Stand in for a collision: another long name's file at this path.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = "a".repeat(200);
    let b = "b".repeat(200);
    store.raise(&b, 9).unwrap();
    fs::rename(store.path_of(&b), store.path_of(&a)).unwrap();
    assert!(matches!(
        store.load(&a),
        Fence::Damaged(Damage::WrongExport { found, .. }) if found == b
    ));
    assert!(matches!(
        store.load(&b),
        Fence::Damaged(Damage::Missing { .. })
    ));
}

#[test]
fn manifest_round_trips_and_rejects_damage() {
    let names: BTreeSet<String> = ["a", "é/..", "x\ny"].map(String::from).into();
    let bytes = encode_manifest(&names);
    assert_eq!(parse_manifest(&bytes), Ok(names.clone()));
    assert_eq!(
        parse_manifest(&encode_manifest(&BTreeSet::new())),
        Ok(BTreeSet::new())
    );
    for at in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        assert!(parse_manifest(&bad).is_err(), "flip at {at}");
    }
    for len in 0..bytes.len() {
        assert!(parse_manifest(&bytes[..len]).is_err(), "truncated to {len}");
    }
    assert_eq!(
        salvage_manifest(&bytes)
            .into_iter()
            .collect::<BTreeSet<_>>(),
        names
    );
}

#[test]
fn damage_messages_name_the_file() {
    let path = PathBuf::from("/state/fence-61");
    let damages = [
        Damage::Missing { path: path.clone() },
        Damage::ManifestCorrupt {
            path: path.clone(),
            manifest: "/state/MANIFEST".into(),
            reason: "checksum mismatch".into(),
        },
        Damage::BadHeader {
            path: path.clone(),
            reason: "bad magic".into(),
        },
        Damage::WrongExport {
            path: path.clone(),
            found: "b".into(),
        },
        Damage::BothSlotsBad {
            path: path.clone(),
            reason_a: "bad magic".into(),
            reason_b: "truncated".into(),
        },
        Damage::Io {
            path: path.clone(),
            error: "EIO".into(),
        },
        Damage::WriteFailed {
            path: path.clone(),
            error: "EIO".into(),
        },
    ];
    for damage in damages {
        let text = damage.to_string();
        assert!(text.contains("/state/fence-61"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }
}

#[test]
fn write_failure_poisons_the_export_until_repair() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_at_42(dir.path(), "disk0");
    let path = store.path_of("disk0");
    let error = FenceError::Io {
        path: path.clone(),
        source: io::Error::other("fsync failed"),
    };
    store.mark_write_failed(&mut store.lock_inner(), "disk0", &path, &error);
    assert!(matches!(
        store.load("disk0"),
        Fence::Damaged(Damage::WriteFailed { .. })
    ));
    assert!(store.raise("disk0", 50).is_err());
    store.repair("disk0", 42).unwrap();
    assert_eq!(store.load("disk0"), Fence::Known(42));
}

#[test]
fn concurrent_raises_end_at_the_max() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(open(dir.path()));
    let threads: Vec<_> = (0..4u64)
        .map(|thread| {
            let store = std::sync::Arc::clone(&store);
            std::thread::spawn(move || {
                for round in 0..8u64 {
                    let token = round * 4 + thread + 1;
                    let fence = store.raise("disk0", token).unwrap();
                    assert!(fence >= token);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(store.load("disk0"), Fence::Known(32));
    let bytes = fs::read(store.path_of("disk0")).unwrap();
    assert_eq!(
        bytes[SLOT_OFFSETS[0]..SLOT_OFFSETS[1]],
        bytes[SLOT_OFFSETS[1]..]
    );
}

#[derive(Debug, Clone)]
enum Op {
    Raise(usize, u64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, 0..50u64).prop_map(|(export, token)| Op::Raise(export, token)),
        1 => (0..3usize, any::<u64>()).prop_map(|(export, token)| Op::Raise(export, token)),
        2 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn load_is_the_max_raised(ops in proptest::collection::vec(op(), 1..16)) {
        let exports = ["a", "é/..", &"z".repeat(EXPORT_NAME_MAX)];
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let mut model = [0u64; 3];
        for op in ops {
            match op {
                Op::Raise(export, token) => {
                    let fence = store.raise(exports[export], token).unwrap();
                    model[export] = model[export].max(token);
                    prop_assert_eq!(fence, model[export]);
                }
                Op::Reopen => {
                    drop(store);
                    store = open(dir.path());
                }
            }
            for (export, fence) in exports.iter().zip(model) {
                prop_assert_eq!(store.load(export), Fence::Known(fence));
            }
        }
    }
}
