//! Files of embeddings made elsewhere (on a recorder's companion board, a GPU box at the field station), for
//! `chorus produce --embeddings`: NumPy `.npy` arrays of shape `[n, dim]` (float32 or float64, little-endian, C order)
//! and Parquet tables with an `embedding` column (a list or fixed-size list of float32 or float64) and, optionally,
//! per-row `sensor` (string) and `start_time` (timestamp) columns. Both are read a batch at a time, never whole.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use chorus_operators::record::Nanos;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

/// Rows read per batch.
const BATCH_ROWS: usize = 1_024;
/// Largest `.npy` header accepted (NumPy writes a few hundred bytes).
const MAX_NPY_HEADER: usize = 1 << 20;

/// One vector of a file, with what the file says of it.
#[derive(Clone, Debug, PartialEq)]
pub struct VectorRow {
    /// The row's sensor, when the file has a `sensor` column and the row a value in it.
    pub sensor: Option<String>,
    /// The start of the row's window, when the file has a `start_time` column and the row a value in it.
    pub start: Option<Nanos>,
    /// The vector.
    pub vector: Vec<f32>,
}

/// An open file of embeddings.
pub struct VectorFile {
    dim: usize,
    rows: usize,
    /// Rows handed out so far.
    read: usize,
    inner: Inner,
}

enum Inner {
    Npy { reader: BufReader<File>, wide: bool },
    Parquet { reader: ParquetRecordBatchReader, peeked: Option<RecordBatch> },
}

impl VectorFile {
    /// Opens `path` by its extension (`.npy` or `.parquet`), reading what it holds but not its vectors.
    pub fn open(path: &Path) -> Result<VectorFile, String> {
        let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        let file = File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
        match extension.as_deref() {
            Some("npy") => open_npy(file),
            Some("parquet") => open_parquet(file),
            _ => Err("is neither .npy nor .parquet: embeddings are read from those two formats".into()),
        }
    }

    /// Values per vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Vectors in the file.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The next vectors, `None` at the end.
    pub fn next_batch(&mut self) -> Result<Option<Vec<VectorRow>>, String> {
        let batch = match &mut self.inner {
            Inner::Npy { reader, wide } => {
                let rows = (self.rows - self.read).min(BATCH_ROWS);
                if rows == 0 {
                    return Ok(None);
                }
                let width = if *wide { 8 } else { 4 };
                let mut bytes = vec![0u8; rows * self.dim * width];
                reader
                    .read_exact(&mut bytes)
                    .map_err(|e| format!("ends before its {} vectors ({e}): the file is cut short", self.rows))?;
                let values: Vec<f32> = if *wide {
                    bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect()
                } else {
                    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect()
                };
                values
                    .chunks_exact(self.dim)
                    .map(|v| VectorRow { sensor: None, start: None, vector: v.to_vec() })
                    .collect()
            }
            Inner::Parquet { reader, peeked } => {
                let batch = match peeked.take() {
                    Some(batch) => batch,
                    None => match reader.next() {
                        None => return Ok(None),
                        Some(batch) => batch.map_err(|e| format!("cannot be read: {e}"))?,
                    },
                };
                parquet_rows(&batch, self.dim, self.read)?
            }
        };
        self.read += batch.len();
        Ok(Some(batch))
    }
}

fn open_npy(file: File) -> Result<VectorFile, String> {
    let length = file.metadata().map_err(|e| format!("cannot read its size: {e}"))?.len();
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).map_err(|_| "is too short to be a .npy file".to_owned())?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err("is not a .npy file (no \\x93NUMPY magic)".into());
    }
    let (header_len, prefix) = match magic[6] {
        1 => {
            let mut len = [0u8; 2];
            reader.read_exact(&mut len).map_err(|_| "ends inside its header".to_owned())?;
            (usize::from(u16::from_le_bytes(len)), 10)
        }
        2 | 3 => {
            let mut len = [0u8; 4];
            reader.read_exact(&mut len).map_err(|_| "ends inside its header".to_owned())?;
            (u32::from_le_bytes(len) as usize, 12)
        }
        version => return Err(format!("is a .npy file of format version {version}, not 1, 2 or 3")),
    };
    if header_len > MAX_NPY_HEADER {
        return Err(format!("declares a header of {header_len} bytes, above {MAX_NPY_HEADER}"));
    }
    let mut header = vec![0u8; header_len];
    reader.read_exact(&mut header).map_err(|_| "ends inside its header".to_owned())?;
    let header = String::from_utf8_lossy(&header);
    let (descr, fortran, shape) = npy_header(&header)?;
    let wide = match descr.as_str() {
        "<f4" => false,
        "<f8" => true,
        ">f4" | ">f8" => return Err(format!("holds big-endian floats ({descr}); save it with arr.astype('<f4')")),
        other => return Err(format!("holds {other} values, not float32 or float64; save it with arr.astype('<f4')")),
    };
    if fortran {
        return Err("is in Fortran order; save it with np.ascontiguousarray(arr)".into());
    }
    let (rows, dim) = match shape.as_slice() {
        [dim] => (1, *dim),
        [rows, dim] => (*rows, *dim),
        _ => return Err(format!("has shape {shape:?}; embeddings are an array of shape [n, dim]")),
    };
    if rows == 0 || dim == 0 {
        return Err(format!("has shape {shape:?}: it holds no vector"));
    }
    let width = if wide { 8 } else { 4 };
    let data =
        rows.checked_mul(dim).and_then(|n| n.checked_mul(width)).and_then(|n| n.checked_add(prefix + header_len));
    if data.is_none_or(|bytes| bytes as u64 != length) {
        return Err(format!(
            "declares {rows} vectors of {dim} values ({descr}) but holds {length} bytes: it is cut short or not what \
             its header says"
        ));
    }
    Ok(VectorFile { dim, rows, read: 0, inner: Inner::Npy { reader, wide } })
}

/// `descr`, `fortran_order` and `shape` of a `.npy` header, a Python dict literal such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 1536), }`.
fn npy_header(header: &str) -> Result<(String, bool, Vec<usize>), String> {
    let after = |key: &str| -> Result<&str, String> {
        let at = header.find(&format!("'{key}'")).ok_or_else(|| format!("has no '{key}' in its header {header:?}"))?;
        let rest = &header[at + key.len() + 2..];
        Ok(rest.trim_start().strip_prefix(':').unwrap_or(rest).trim_start())
    };
    let descr = after("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split_once('\''))
        .map(|(d, _)| d.to_owned())
        .ok_or_else(|| format!("has a header whose 'descr' cannot be read: {header:?}"))?;
    let fortran = after("fortran_order")?.starts_with("True");
    let shape = after("shape")?;
    let shape = shape
        .strip_prefix('(')
        .and_then(|s| s.split_once(')'))
        .map(|(s, _)| s)
        .ok_or_else(|| format!("has a header whose 'shape' cannot be read: {header:?}"))?;
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("has a shape that is not whole numbers: {header:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((descr, fortran, shape))
}

fn open_parquet(file: File) -> Result<VectorFile, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| format!("is not a Parquet file: {e}"))?;
    let rows = builder.metadata().file_metadata().num_rows().max(0) as usize;
    let schema = builder.schema().clone();
    let field = schema.field_with_name("embedding").map_err(|_| {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        format!("has no `embedding` column (its columns: {})", names.join(", "))
    })?;
    let item = match field.data_type() {
        DataType::FixedSizeList(item, _) | DataType::List(item) | DataType::LargeList(item) => item.data_type(),
        other => return Err(format!("has an `embedding` column of {other}, not a list of float32 or float64")),
    };
    if !matches!(item, DataType::Float32 | DataType::Float64) {
        return Err(format!("has an `embedding` column of lists of {item}, not of float32 or float64"));
    }
    if let Ok(sensor) = schema.field_with_name("sensor")
        && !matches!(sensor.data_type(), DataType::Utf8 | DataType::LargeUtf8)
    {
        return Err(format!("has a `sensor` column of {}, not strings", sensor.data_type()));
    }
    if let Ok(start) = schema.field_with_name("start_time")
        && !matches!(start.data_type(), DataType::Timestamp(_, _))
    {
        return Err(format!("has a `start_time` column of {}, not timestamps", start.data_type()));
    }
    let mut reader = builder.with_batch_size(BATCH_ROWS).build().map_err(|e| format!("cannot be read: {e}"))?;
    let peeked = match reader.next() {
        None => return Err("holds no rows".into()),
        Some(batch) => batch.map_err(|e| format!("cannot be read: {e}"))?,
    };
    let column = peeked.column_by_name("embedding").expect("checked above");
    let dim = match column.data_type() {
        DataType::FixedSizeList(_, size) => *size as usize,
        _ => list_value(column, 0).map_err(|e| format!("row 0: {e}"))?.len(),
    };
    if dim == 0 {
        return Err("has vectors of no value".into());
    }
    Ok(VectorFile { dim, rows, read: 0, inner: Inner::Parquet { reader, peeked: Some(peeked) } })
}

/// Row `row` of a list column, as f32.
fn list_value(column: &ArrayRef, row: usize) -> Result<Vec<f32>, String> {
    if column.is_null(row) {
        return Err("has no embedding".into());
    }
    let values: ArrayRef = if let Some(list) = column.as_fixed_size_list_opt() {
        list.value(row)
    } else if let Some(list) = column.as_list_opt::<i32>() {
        list.value(row)
    } else if let Some(list) = column.as_list_opt::<i64>() {
        list.value(row)
    } else {
        return Err(format!("the embedding column is of {}", column.data_type()));
    };
    if values.null_count() > 0 {
        return Err("has a null value in its embedding".into());
    }
    if let Some(values) = values.as_primitive_opt::<Float32Type>() {
        Ok(values.values().to_vec())
    } else if let Some(values) = values.as_primitive_opt::<Float64Type>() {
        Ok(values.values().iter().map(|v| *v as f32).collect())
    } else {
        Err(format!("has embedding values of {}", values.data_type()))
    }
}

/// The rows of a Parquet batch whose first row is row `first` of the file.
fn parquet_rows(batch: &RecordBatch, dim: usize, first: usize) -> Result<Vec<VectorRow>, String> {
    let column = batch.column_by_name("embedding").expect("checked when opened");
    let sensors = batch.column_by_name("sensor");
    let starts = batch.column_by_name("start_time");
    (0..batch.num_rows())
        .map(|i| {
            let vector = list_value(column, i).map_err(|e| format!("row {}: {e}", first + i))?;
            if vector.len() != dim {
                return Err(format!("row {} has {} values, the rows before it {dim}", first + i, vector.len()));
            }
            let sensor = sensors.filter(|c| c.is_valid(i)).and_then(|c| {
                c.as_string_opt::<i32>()
                    .map(|s| s.value(i).to_owned())
                    .or_else(|| c.as_string_opt::<i64>().map(|s| s.value(i).to_owned()))
            });
            let start = starts.filter(|c| c.is_valid(i)).and_then(|c| timestamp_nanos(c, i));
            Ok(VectorRow { sensor, start, vector })
        })
        .collect()
}

/// Row `row` of a timestamp column in nanoseconds since the epoch (`None` past what 64 bits of them hold).
fn timestamp_nanos(column: &ArrayRef, row: usize) -> Option<Nanos> {
    match column.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => {
            column.as_primitive::<TimestampSecondType>().value(row).checked_mul(1_000_000_000)
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            column.as_primitive::<TimestampMillisecondType>().value(row).checked_mul(1_000_000)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            column.as_primitive::<TimestampMicrosecondType>().value(row).checked_mul(1_000)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            Some(column.as_primitive::<TimestampNanosecondType>().value(row))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, Float64Builder, ListBuilder};
    use arrow_array::{StringArray, TimestampMillisecondArray};
    use arrow_schema::{Field, Schema};

    use super::*;

    fn npy(header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        // Padded with spaces and a newline to a multiple of 64, as NumPy writes it.
        let mut header = header.to_owned();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        bytes
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::File::create(&path).unwrap().write_all(bytes).unwrap();
        path
    }

    fn all(file: &mut VectorFile) -> Result<Vec<VectorRow>, String> {
        let mut rows = Vec::new();
        while let Some(batch) = file.next_batch()? {
            rows.extend(batch);
        }
        Ok(rows)
    }

    #[test]
    fn r17_npy_arrays_of_float32_and_float64_read_row_by_row() {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<f32> = (0..2_100 * 3).map(|i| i as f32).collect();
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let path =
            write(dir.path(), "v.npy", &npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2100, 3), }", &data));
        let mut file = VectorFile::open(&path).unwrap();
        assert_eq!((file.rows(), file.dim()), (2_100, 3));
        let rows = all(&mut file).unwrap();
        assert_eq!(rows.len(), 2_100);
        assert_eq!(rows[2_099].vector, [6_297.0, 6_298.0, 6_299.0]);
        assert_eq!((rows[0].sensor.as_ref(), rows[0].start), (None, None));
        let data: Vec<u8> = [0.5f64, -1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let path =
            write(dir.path(), "one.npy", &npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", &data));
        assert_eq!(all(&mut VectorFile::open(&path).unwrap()).unwrap()[0].vector, [0.5, -1.0]);
    }

    #[test]
    fn r17_files_that_are_not_embeddings_are_refused_naming_the_fault() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |name: &str, bytes: &[u8]| VectorFile::open(&write(dir.path(), name, bytes)).err().unwrap();
        let header = |descr: &str, fortran: &str, shape: &str| {
            npy(&format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}"), &[0; 64])
        };
        assert!(refused("a.npy", &header("<i8", "False", "(2, 4)")).contains("<i8 values"));
        assert!(refused("b.npy", &header(">f4", "False", "(2, 4)")).contains("big-endian"));
        assert!(refused("c.npy", &header("<f4", "True", "(2, 4)")).contains("Fortran order"));
        assert!(refused("d.npy", &header("<f4", "False", "(2, 4, 2)")).contains("shape [2, 4, 2]"));
        assert!(refused("e.npy", &header("<f4", "False", "(0, 4)")).contains("no vector"));
        assert!(refused("f.npy", b"RIFF....").contains("not a .npy file"));
        assert!(refused("g.wav", b"RIFF....").contains("neither .npy nor .parquet"));
        // A file cut short is refused before a vector is read, naming how many it declared.
        assert!(refused("h.npy", &header("<f4", "False", "(100, 4)")).contains("declares 100 vectors of 4 values"));
    }

    fn parquet(dir: &Path, name: &str, batch: RecordBatch) -> std::path::PathBuf {
        let path = dir.join(name);
        let file = std::fs::File::create(&path).unwrap();
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        path
    }

    #[test]
    fn r17_parquet_tables_give_vectors_with_their_sensors_and_start_times() {
        let dir = tempfile::tempdir().unwrap();
        let mut lists = FixedSizeListBuilder::new(Float32Builder::new(), 2);
        for row in 0..3 {
            lists.values().append_slice(&[row as f32, 1.0]);
            lists.append(true);
        }
        let lists = lists.finish();
        let sensors = StringArray::from(vec![Some("a"), None, Some("b")]);
        let starts = TimestampMillisecondArray::from(vec![Some(1_000), Some(2_000), None]).with_timezone("UTC");
        let schema = Schema::new(vec![
            Field::new("embedding", lists.data_type().clone(), false),
            Field::new("sensor", DataType::Utf8, true),
            Field::new("start_time", starts.data_type().clone(), true),
        ]);
        let batch =
            RecordBatch::try_new(Arc::new(schema), vec![Arc::new(lists), Arc::new(sensors), Arc::new(starts)]).unwrap();
        let mut file = VectorFile::open(&parquet(dir.path(), "fixed.parquet", batch)).unwrap();
        assert_eq!((file.rows(), file.dim()), (3, 2));
        let rows = all(&mut file).unwrap();
        assert_eq!(rows[0], VectorRow { sensor: Some("a".into()), start: Some(1_000_000_000), vector: vec![0.0, 1.0] });
        assert_eq!((rows[1].sensor.as_deref(), rows[1].start), (None, Some(2_000_000_000)));
        assert_eq!((rows[2].sensor.as_deref(), rows[2].start), (Some("b"), None));

        // Lists of float64, as pandas writes them; a row of another length is an error naming it.
        let mut lists = ListBuilder::new(Float64Builder::new());
        for len in [3, 3, 2] {
            lists.values().append_slice(&vec![1.0; len]);
            lists.append(true);
        }
        let lists = lists.finish();
        let schema = Schema::new(vec![Field::new("embedding", lists.data_type().clone(), false)]);
        let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(lists)]).unwrap();
        let mut file = VectorFile::open(&parquet(dir.path(), "lists.parquet", batch)).unwrap();
        assert_eq!(file.dim(), 3);
        assert_eq!(all(&mut file).unwrap_err(), "row 2 has 2 values, the rows before it 3");

        let schema = Schema::new(vec![Field::new("vector", DataType::Float32, false)]);
        let batch =
            RecordBatch::try_new(Arc::new(schema), vec![Arc::new(arrow_array::Float32Array::from(vec![1.0]))]).unwrap();
        let error = VectorFile::open(&parquet(dir.path(), "none.parquet", batch)).err().unwrap();
        assert_eq!(error, "has no `embedding` column (its columns: vector)");
    }
}
