#!/usr/bin/env python3
"""Write the SQL of the lab's `moncabinet` database to stdout.

Deterministic (fixed seed) and stdlib-only: the same file always gives the same
data, so the seed data directory built from it can be cached by content hash.
The documents mimic the real knowledge base: Tunisian legal texts in French and
Arabic, tens of KB each, plus a 1024-float embedding (random floats also keep
the gzip'd dump near the production size, ~16 MB).
"""

import argparse
import random
import sys
import uuid

SEED = 20260211
DOCUMENTS = 580
EMBEDDING_DIM = 1024
UUID_NAMESPACE = uuid.UUID("6f1c1c3e-6a55-4f43-9d7e-2f3a1b0c5d11")

FR_VOCABULARY = (
    "le tribunal de première instance la cour d'appel la cour de cassation le juge "
    "le demandeur le défendeur l'appelant l'intimé le ministère public le greffier "
    "l'avocat le mandataire la partie civile le prévenu l'accusé la victime le témoin "
    "l'expert judiciaire l'huissier de justice le notaire le contrat la convention "
    "l'obligation la créance la dette le créancier le débiteur la responsabilité "
    "civile délictuelle contractuelle le préjudice le dommage moral matériel "
    "l'indemnisation les dommages-intérêts la réparation la faute la force majeure "
    "la nullité absolue relative la résolution la résiliation le délai de prescription "
    "la déchéance la forclusion l'action en justice la requête l'assignation la "
    "citation la signification la notification le jugement l'arrêt l'ordonnance "
    "de référé le pourvoi l'appel l'opposition la tierce opposition la révision "
    "l'exécution provisoire la saisie conservatoire la saisie-arrêt l'astreinte "
    "le code des obligations et des contrats le code de procédure civile et "
    "commerciale le code pénal le code de procédure pénale le code du statut "
    "personnel le code du travail le code des sociétés commerciales la loi "
    "organique le décret gouvernemental l'arrêté ministériel la circulaire la "
    "jurisprudence la doctrine la constitution l'article l'alinéa le paragraphe "
    "en vertu de conformément à attendu que considérant que par ces motifs "
    "statuant publiquement contradictoirement en dernier ressort déclare recevable "
    "rejette confirme infirme annule condamne ordonne dit que sursoit à statuer "
    "le mariage le divorce la pension alimentaire la garde de l'enfant la filiation "
    "la succession l'héritage le testament la donation le bail commercial le fonds "
    "de commerce la société anonyme à responsabilité limitée le gérant l'associé "
    "le licenciement abusif le contrat de travail l'employeur le salarié la "
    "prud'homie la propriété foncière l'immatriculation le titre foncier "
    "l'hypothèque le privilège la caution la garantie le cautionnement la vente "
    "le prix la livraison le vice caché la garantie d'éviction la bonne foi "
    "la mauvaise foi l'ordre public les bonnes mœurs la preuve l'aveu le serment "
    "l'acte authentique l'acte sous seing privé la présomption l'enquête "
    "l'instruction la détention préventive la mise en liberté la peine la sanction "
    "l'amende l'emprisonnement avec sursis la récidive la circonstance atténuante "
    "l'infraction le délit le crime la contravention la compétence territoriale "
    "matérielle la juridiction administrative le tribunal administratif le recours "
    "pour excès de pouvoir la décision administrative l'intérêt à agir la qualité"
)

AR_VOCABULARY = (
    "المحكمة الابتدائية محكمة الاستئناف محكمة التعقيب القاضي المدعي المدعى عليه "
    "المستأنف المستأنف ضده النيابة العمومية كاتب المحكمة المحامي الوكيل القائم "
    "بالحق الشخصي المتهم المتضرر الشاهد الخبير العدلي عدل التنفيذ عدل الإشهاد "
    "العقد الاتفاقية الالتزام الدين الدائن المدين المسؤولية المدنية التقصيرية "
    "العقدية الضرر المادي المعنوي التعويض جبر الضرر الخطأ القوة القاهرة البطلان "
    "المطلق النسبي الفسخ أجل التقادم السقوط الدعوى العريضة الاستدعاء الإعلام "
    "الحكم القرار الإذن الاستعجالي الطعن بالتعقيب الاستئناف الاعتراض إعادة النظر "
    "النفاذ العاجل العقلة التحفظية العقلة التوقيفية الغرامة التهديدية مجلة "
    "الالتزامات والعقود مجلة المرافعات المدنية والتجارية المجلة الجزائية مجلة "
    "الإجراءات الجزائية مجلة الأحوال الشخصية مجلة الشغل مجلة الشركات التجارية "
    "القانون الأساسي الأمر الحكومي القرار الوزاري المنشور فقه القضاء الفقه "
    "الدستور الفصل الفقرة بمقتضى طبقا لأحكام حيث أن وحيث وبناء على ذلك "
    "لهذه الأسباب قضت المحكمة ابتدائيا حضوريا نهائيا بقبول الدعوى شكلا وفي "
    "الأصل برفضها بإقرار الحكم بنقضه بإلزام المطلوب بأداء الزواج الطلاق النفقة "
    "الحضانة النسب الميراث التركة الوصية الهبة الكراء التجاري الأصل التجاري "
    "الشركة خفية الاسم ذات المسؤولية المحدودة المسير الشريك الطرد التعسفي عقد "
    "الشغل المؤجر الأجير الملكية العقارية التسجيل الرسم العقاري الرهن الامتياز "
    "الضمان الكفالة البيع الثمن التسليم العيب الخفي ضمان الاستحقاق حسن النية "
    "سوء النية النظام العام الأخلاق الحميدة الإثبات الإقرار اليمين الحجة "
    "الرسمية الكتب الخطي القرينة البحث التحقيق الإيقاف التحفظي الإفراج العقوبة "
    "الخطية السجن مع تأجيل التنفيذ العود ظروف التخفيف الجريمة الجنحة الجناية "
    "المخالفة الاختصاص الترابي الحكمي القضاء الإداري المحكمة الإدارية دعوى "
    "تجاوز السلطة المقرر الإداري المصلحة الصفة"
)
FR_WORDS = FR_VOCABULARY.split()
AR_WORDS = AR_VOCABULARY.split()

FR_TITLES = ("Arrêt n°", "Jugement n°", "Décret n°", "Loi n°", "Circulaire n°", "Avis n°")
AR_TITLES = ("قرار تعقيبي عدد", "حكم ابتدائي عدد", "أمر حكومي عدد", "قانون عدد", "منشور عدد", "رأي عدد")
CATEGORIES = ("jurisprudence", "legislation", "doctrine", "procedure", "modeles", "codes")

USERS = (
    ("admin@moncabinet.tn", "Administrateur Cabinet"),
    ("avocat@moncabinet.tn", "Maître Ben Salah"),
)
WEB_SOURCES = (
    ("https://www.legislation.tn", "Portail national de la législation"),
    ("https://www.cassation.tn", "Cour de cassation"),
    ("https://www.iort.gov.tn", "Journal officiel (JORT)"),
    ("https://www.justice.gov.tn", "Ministère de la Justice"),
    ("https://www.e-justice.tn", "e-Justice"),
    ("https://www.ta.tn", "Tribunal administratif"),
)
CREATED_AT = "2025-11-03 09:00:00+00"

SCHEMA = """
SET client_encoding = 'UTF8';
CREATE TABLE public.users (
    id uuid PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.web_sources (
    id serial PRIMARY KEY,
    url text NOT NULL,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.knowledge_base (
    id serial PRIMARY KEY,
    title text NOT NULL,
    category text NOT NULL,
    language text NOT NULL CHECK (language IN ('fr', 'ar')),
    content text NOT NULL,
    embedding real[],
    source_id integer REFERENCES public.web_sources(id),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX knowledge_base_category_idx ON public.knowledge_base (category);
CREATE TABLE public.ai_usage_logs (
    id bigserial PRIMARY KEY,
    user_id uuid REFERENCES public.users(id),
    tokens integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public._migrations (
    name text PRIMARY KEY,
    applied_at timestamptz DEFAULT now()
);
"""


def copy_escape(text):
    """Escape a value for COPY's text format."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def citation(rng, arabic):
    # Numbered references (articles, case numbers, dates) are what makes real
    # rulings compress far worse than plain prose.
    article, case, year = rng.randint(1, 1500), rng.randint(100, 99999), rng.randint(1956, 2025)
    day, month = rng.randint(1, 28), rng.randint(1, 12)
    if arabic:
        return f"(الفصل {article}، القضية عدد {case}/{year} بتاريخ {day}/{month}/{year})"
    return f"(article {article}, affaire n° {case}/{year} du {day:02d}/{month:02d}/{year})"


def paragraph(rng, words, sentences):
    arabic = words is AR_WORDS
    out = []
    for _ in range(sentences):
        sentence = " ".join(rng.choices(words, k=rng.randint(12, 30)))
        out.append(f"{sentence[0].upper()}{sentence[1:]} {citation(rng, arabic)}.")
    return " ".join(out)


def document_text(rng, language, target_bytes):
    # Mostly one language, with citations in the other, as in bilingual rulings.
    main, other = (FR_WORDS, AR_WORDS) if language == "fr" else (AR_WORDS, FR_WORDS)
    parts, size = [], 0
    while size < target_bytes:
        words = other if rng.random() < 0.15 else main
        para = paragraph(rng, words, rng.randint(3, 8))
        parts.append(para)
        size += len(para.encode("utf-8")) + 1
    return "\n".join(parts)


def embedding(rng):
    return "{" + ",".join(f"{rng.gauss(0.0, 0.05):.8g}" for _ in range(EMBEDDING_DIM)) + "}"


def user_rows():
    for email, name in USERS:
        yield f"{uuid.uuid5(UUID_NAMESPACE, email)}\t{email}\t{copy_escape(name)}\t{CREATED_AT}"


def source_rows():
    for i, (url, name) in enumerate(WEB_SOURCES, start=1):
        yield f"{i}\t{url}\t{copy_escape(name)}\t{CREATED_AT}"


def document_rows(rng, count, mean_bytes):
    for i in range(1, count + 1):
        language = "ar" if rng.random() < 0.45 else "fr"
        prefix = rng.choice(AR_TITLES if language == "ar" else FR_TITLES)
        title = f"{prefix} {rng.randint(1000, 99999)}/{rng.randint(1990, 2025)}"
        target = int(mean_bytes * rng.uniform(0.5, 1.5))
        content = copy_escape(document_text(rng, language, target))
        created = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} 10:00:00+00"
        yield "\t".join((str(i), title, rng.choice(CATEGORIES), language, content,
                         embedding(rng), str(rng.randint(1, len(WEB_SOURCES))), created))


def copy_block(out, table, columns, rows):
    out.write(f"COPY public.{table} ({', '.join(columns)}) FROM stdin;\n")
    for row in rows:
        out.write(row)
        out.write("\n")
    out.write("\\.\n")


def write_sql(out, documents, mean_bytes):
    rng = random.Random(SEED)
    out.write(SCHEMA)
    copy_block(out, "users", ("id", "email", "name", "created_at"), user_rows())
    copy_block(out, "web_sources", ("id", "url", "name", "created_at"), source_rows())
    copy_block(out, "knowledge_base",
               ("id", "title", "category", "language", "content", "embedding", "source_id", "created_at"),
               document_rows(rng, documents, mean_bytes))
    out.write("SELECT setval('public.web_sources_id_seq', (SELECT max(id) FROM public.web_sources));\n")
    out.write("SELECT setval('public.knowledge_base_id_seq', (SELECT max(id) FROM public.knowledge_base));\n")
    out.write("ANALYZE;\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=DOCUMENTS)
    parser.add_argument("--mean-bytes", type=int, default=88_000, help="mean content size per document")
    args = parser.parse_args()
    # A big buffer and explicit UTF-8: stdout may be a pipe with a C locale.
    with open(sys.stdout.fileno(), "w", encoding="utf-8", buffering=1 << 20, closefd=False) as out:
        write_sql(out, args.documents, args.mean_bytes)


if __name__ == "__main__":
    main()
