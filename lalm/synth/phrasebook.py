"""A phrasebook of everyday sentences with their translations among lalm-synth's 8 languages.

Each row gives the same sentence in en, de, zh, es, fr, it, ja, ko (in `LANGUAGES` order);
any two columns are a translation pair. Rows are assigned to splits by index (`phrase_split`),
so test and valid translation pairs never appear in training.
"""

from __future__ import annotations

from lalm.data.manifest import LANGUAGES

PHRASES: tuple[tuple[str, ...], ...] = (
    ("Good morning.", "Guten Morgen.", "早上好。", "Buenos días.", "Bonjour.", "Buongiorno.",
     "おはようございます。", "좋은 아침입니다."),
    ("Thank you very much.", "Vielen Dank.", "非常感谢。", "Muchas gracias.", "Merci beaucoup.",
     "Grazie mille.", "どうもありがとうございます。", "대단히 감사합니다."),
    ("Where is the train station?", "Wo ist der Bahnhof?", "火车站在哪里？",
     "¿Dónde está la estación de tren?", "Où est la gare ?", "Dov'è la stazione?",
     "駅はどこですか？", "기차역은 어디에 있습니까?"),
    ("How much does this cost?", "Wie viel kostet das?", "这个多少钱？", "¿Cuánto cuesta esto?",
     "Combien ça coûte ?", "Quanto costa questo?", "これはいくらですか？", "이것은 얼마입니까?"),
    ("I would like a cup of coffee.", "Ich hätte gern eine Tasse Kaffee.", "我想要一杯咖啡。",
     "Quisiera una taza de café.", "Je voudrais une tasse de café.", "Vorrei una tazza di caffè.",
     "コーヒーを一杯ください。", "커피 한 잔 주세요."),
    ("The weather is nice today.", "Das Wetter ist heute schön.", "今天天气很好。",
     "Hoy hace buen tiempo.", "Il fait beau aujourd'hui.", "Oggi fa bel tempo.",
     "今日はいい天気です。", "오늘은 날씨가 좋습니다."),
    ("Please open the window.", "Bitte öffne das Fenster.", "请打开窗户。",
     "Por favor, abre la ventana.", "Ouvre la fenêtre, s'il te plaît.",
     "Per favore, apri la finestra.", "窓を開けてください。", "창문을 열어 주세요."),
    ("What time is it?", "Wie spät ist es?", "现在几点？", "¿Qué hora es?", "Quelle heure est-il ?",
     "Che ore sono?", "今何時ですか？", "지금 몇 시입니까?"),
    ("I do not understand.", "Ich verstehe nicht.", "我不明白。", "No entiendo.",
     "Je ne comprends pas.", "Non capisco.", "わかりません。", "이해하지 못합니다."),
    ("My name is Anna.", "Ich heiße Anna.", "我叫安娜。", "Me llamo Anna.", "Je m'appelle Anna.",
     "Mi chiamo Anna.", "私の名前はアンナです。", "제 이름은 안나입니다."),
    ("The book is on the table.", "Das Buch liegt auf dem Tisch.", "书在桌子上。",
     "El libro está sobre la mesa.", "Le livre est sur la table.", "Il libro è sul tavolo.",
     "本はテーブルの上にあります。", "책은 테이블 위에 있습니다."),
    ("We are going to the beach tomorrow.", "Wir fahren morgen an den Strand.", "我们明天去海边。",
     "Mañana vamos a la playa.", "Nous allons à la plage demain.", "Domani andiamo al mare.",
     "明日、私たちは海に行きます。", "우리는 내일 바다에 갑니다."),
    ("Can you help me?", "Kannst du mir helfen?", "你能帮我吗？", "¿Puedes ayudarme?",
     "Peux-tu m'aider ?", "Puoi aiutarmi?", "手伝ってくれますか？", "저를 도와줄 수 있습니까?"),
    ("The shop closes at eight.", "Der Laden schließt um acht.", "商店八点关门。",
     "La tienda cierra a las ocho.", "Le magasin ferme à huit heures.",
     "Il negozio chiude alle otto.", "店は八時に閉まります。", "가게는 여덟 시에 문을 닫습니다."),
    ("I am learning to cook.", "Ich lerne kochen.", "我在学做饭。", "Estoy aprendiendo a cocinar.",
     "J'apprends à cuisiner.", "Sto imparando a cucinare.", "私は料理を習っています。",
     "저는 요리를 배우고 있습니다."),
    ("The children are playing in the garden.", "Die Kinder spielen im Garten.",
     "孩子们在花园里玩。", "Los niños juegan en el jardín.", "Les enfants jouent dans le jardin.",
     "I bambini giocano in giardino.", "子供たちは庭で遊んでいます。",
     "아이들이 정원에서 놀고 있습니다."),
    ("Where is the nearest hospital?", "Wo ist das nächste Krankenhaus?", "最近的医院在哪里？",
     "¿Dónde está el hospital más cercano?", "Où est l'hôpital le plus proche ?",
     "Dov'è l'ospedale più vicino?", "一番近い病院はどこですか？", "가장 가까운 병원은 어디입니까?"),
    ("I like listening to music.", "Ich höre gern Musik.", "我喜欢听音乐。",
     "Me gusta escuchar música.", "J'aime écouter de la musique.", "Mi piace ascoltare la musica.",
     "私は音楽を聴くのが好きです。", "저는 음악 듣는 것을 좋아합니다."),
    ("The train is late.", "Der Zug hat Verspätung.", "火车晚点了。", "El tren llega tarde.",
     "Le train est en retard.", "Il treno è in ritardo.", "電車が遅れています。", "기차가 늦습니다."),
    ("See you next week.", "Bis nächste Woche.", "下周见。", "Hasta la próxima semana.",
     "À la semaine prochaine.", "Ci vediamo la prossima settimana.", "また来週。",
     "다음 주에 만나요."),
    ("Is there a pharmacy nearby?", "Gibt es hier in der Nähe eine Apotheke?", "附近有药店吗？",
     "¿Hay una farmacia cerca?", "Y a-t-il une pharmacie près d'ici ?",
     "C'è una farmacia qui vicino?", "近くに薬局はありますか？", "근처에 약국이 있습니까?"),
    ("I need a taxi.", "Ich brauche ein Taxi.", "我需要一辆出租车。", "Necesito un taxi.",
     "J'ai besoin d'un taxi.", "Ho bisogno di un taxi.", "タクシーが必要です。", "택시가 필요합니다."),
    ("The museum is closed on Monday.", "Das Museum ist am Montag geschlossen.", "博物馆星期一闭馆。",
     "El museo está cerrado los lunes.", "Le musée est fermé le lundi.",
     "Il museo è chiuso il lunedì.", "博物館は月曜日が休みです。", "박물관은 월요일에 문을 닫습니다."),
    ("Happy birthday!", "Alles Gute zum Geburtstag!", "生日快乐！", "¡Feliz cumpleaños!",
     "Joyeux anniversaire !", "Buon compleanno!", "お誕生日おめでとうございます！", "생일 축하합니다!"),
)

#: English names of the languages (the answer of language identification).
LANGUAGE_NAMES = {"en": "English", "de": "German", "zh": "Chinese", "es": "Spanish",
                  "fr": "French", "it": "Italian", "ja": "Japanese", "ko": "Korean"}


def phrase_split(index: int) -> str:
    """The split that phrase row `index` belongs to (test and valid rows are held out)."""
    return {0: "test", 1: "valid"}.get(index % 8, "train")


def phrases_for(split: str) -> list[int]:
    """Row indices of the phrases in `split`."""
    return [i for i in range(len(PHRASES)) if phrase_split(i) == split]


def phrase(index: int, language: str) -> str:
    """Row `index` in `language`."""
    return PHRASES[index][LANGUAGES.index(language)]
